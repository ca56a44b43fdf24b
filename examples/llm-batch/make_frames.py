"""Write the example's frames and frame_pairs.json: two short trajectories of a square moving
across a small scene, and the pairs of frames to label. Run again to regenerate them."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
TRAJECTORIES = {"traj_a": ((200, 60, 40), (8, 30), (14, 0)), "traj_b": ((40, 120, 200), (70, 10), (-12, 9))}
FRAMES = 4


def frame(color, start, step, k) -> Image.Image:
    image = Image.new("RGB", (96, 72), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 56, 95, 71], fill=(120, 110, 100))          # a table edge
    x, y = start[0] + step[0] * k, start[1] + step[1] * k
    draw.rectangle([x, y, x + 14, y + 14], fill=color)
    return image


def main() -> None:
    (HERE / "frames").mkdir(exist_ok=True)
    pairs = []
    for trajectory, (color, start, step) in TRAJECTORIES.items():
        for k in range(FRAMES):
            frame(color, start, step, k).save(HERE / "frames" / f"{trajectory}_{k:03d}.jpg", quality=85)
        for k in range(FRAMES):
            for delta in (1, 2):
                if k + delta < FRAMES:
                    pairs.append({"pair_index": len(pairs), "trajectory_id": trajectory, "frame_k": k,
                                  "frame_k1": k + delta, "delta": delta,
                                  "frame_k_path": f"frames/{trajectory}_{k:03d}.jpg",
                                  "frame_k1_path": f"frames/{trajectory}_{k + delta:03d}.jpg"})
    (HERE / "frame_pairs.json").write_text(json.dumps(pairs, indent=1) + "\n")


if __name__ == "__main__":
    main()
