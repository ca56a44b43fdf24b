"""Write a folder shaped like the real job's `sampled_pairs/`: `frame_pairs.json` and the frames it
names, as JPEGs of a camera's size (1280 x 720, 150-600 KB each).

    python make_frames.py --pairs 48 --out sampled_pairs_smoke     # the smoke preset's pairs
    python make_frames.py                                          # the real job's 80,614 pairs

Each trajectory is a scene (a table, a few objects, a gripper moving across it) filmed every 30
steps; each pair is two frames of one trajectory 30 steps apart, with the pair's metadata as the
real `frame_pairs.json` has it. Sensor noise makes the JPEGs as large as real ones (flat synthetic
images would compress to a few KB and hide the packing limits). With many pairs, only the first
`--distinct-frames` frames are drawn; the others are hard links to them (same bytes, same request
sizes, a fraction of the disk). Needs Pillow: `pip install 'corral[llm]'` (or `pip install pillow`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 1280, 720
STEP = 30                      # frames between the two frames of a pair
PAIRS_PER_TRAJECTORY = 10
MIN_BYTES, MAX_BYTES = 150_000, 600_000
LABS = ("AUTOLab", "IRIS", "RAIL", "ILIAD", "GuptaLab", "REAL", "TRI", "IPRL", "CLVR", "PennPAL")


def trajectory_id(rng: random.Random) -> str:
    return (f"{rng.choice(LABS)}+{rng.getrandbits(32):08x}+2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}-"
            f"{rng.randint(0, 23):02d}h-{rng.randint(0, 59):02d}m-{rng.randint(0, 59):02d}s")


def scene(rng: random.Random) -> dict:
    return {"wall": tuple(rng.randint(150, 230) for _ in range(3)),
            "table": tuple(rng.randint(70, 140) for _ in range(3)),
            "objects": [(rng.randint(80, WIDTH - 200), rng.randint(int(HEIGHT * 0.55), HEIGHT - 120),
                         rng.randint(40, 140), tuple(rng.randint(0, 255) for _ in range(3))) for _ in range(5)],
            "start": (rng.randint(100, WIDTH - 300), rng.randint(80, 300)),
            "velocity": (rng.uniform(-1.5, 1.5), rng.uniform(-0.6, 0.8)),
            "noise": rng.uniform(0.05, 0.3)}


def draw(look: dict, step: int, seed: int) -> bytes:
    """One frame as JPEG bytes, between MIN_BYTES and MAX_BYTES."""
    image = Image.new("RGB", (WIDTH, HEIGHT), look["wall"])
    pen = ImageDraw.Draw(image)
    pen.rectangle([0, int(HEIGHT * 0.5), WIDTH, HEIGHT], fill=look["table"])
    for x, y, size, color in look["objects"]:
        pen.ellipse([x, y, x + size, y + size * 0.7], fill=color)
    x = min(max(look["start"][0] + look["velocity"][0] * step, 40), WIDTH - 120)
    y = min(max(look["start"][1] + look["velocity"][1] * step, 60), int(HEIGHT * 0.6))
    pen.rectangle([x, 0, x + 40, y], fill=(60, 60, 70))                       # the arm
    pen.rectangle([x - 30, y, x + 70, y + 50], fill=(30, 30, 35))             # the gripper
    rng = random.Random(seed)
    noise = Image.frombytes("RGB", (WIDTH, HEIGHT), rng.randbytes(WIDTH * HEIGHT * 3))
    alpha = look["noise"]
    for _ in range(6):
        out = io.BytesIO()
        Image.blend(image, noise, alpha).save(out, format="JPEG", quality=90)
        size = out.tell()
        if size < MIN_BYTES:
            alpha *= 1.5
        elif size > MAX_BYTES:
            alpha *= 0.7
        else:
            break
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=80_614, help="pairs to write (default: the real job's 80,614)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "sampled_pairs",
                        help="folder for frame_pairs.json and the frames (default: sampled_pairs/ here)")
    parser.add_argument("--distinct-frames", type=int, default=2000,
                        help="frames drawn; the rest are hard links to them (default 2000, about 700 MB)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.distinct_frames < 1:
        parser.error("--pairs and --distinct-frames must be at least 1")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs: list[dict] = []
    drawn: list[Path] = []
    trajectory = 0
    while len(pairs) < args.pairs:
        name, look = trajectory_id(rng), scene(rng)
        folder = args.out / f"traj_{trajectory:03d}" / "frames"
        folder.mkdir(parents=True, exist_ok=True)
        count = min(PAIRS_PER_TRAJECTORY, args.pairs - len(pairs))
        first = rng.randint(0, 4) * STEP
        for index in range(count + 1):
            path = folder / f"frame_{first + index * STEP:05d}.jpg"
            write_frame(path, look, index, args.seed * 1_000_003 + len(drawn), drawn, args.distinct_frames)
        for index in range(count):
            k = first + index * STEP
            pairs.append({
                "pair_index": len(pairs), "trajectory_id": name, "frame_k": k, "frame_k_d": k + STEP, "d": STEP,
                "frame_k_path": f"traj_{trajectory:03d}/frames/frame_{k:05d}.jpg",
                "frame_k_d_path": f"traj_{trajectory:03d}/frames/frame_{k + STEP:05d}.jpg",
                "position_delta": round(rng.uniform(0.0, 0.3), 3),
                "gripper_delta": rng.choice((0.0, 0.0, 0.0, 1.0, -1.0)),
                "z_delta": round(rng.uniform(-0.15, 0.15), 3), "rotation_delta": round(rng.uniform(0.0, 0.4), 3),
                "salience_tier": rng.choice("AABC")})
        trajectory += 1
    (args.out / "frame_pairs.json").write_text(json.dumps(pairs, indent=1) + "\n")
    print(f"{len(pairs):,} pairs of {trajectory:,} trajectories in {args.out}/frame_pairs.json "
          f"({min(len(drawn), args.distinct_frames):,} frames drawn)")


def write_frame(path: Path, look: dict, index: int, seed: int, drawn: list[Path], distinct: int) -> None:
    if path.exists():
        path.unlink()
    if len(drawn) < distinct:
        path.write_bytes(draw(look, index * STEP, seed))
        drawn.append(path)
        return
    source = drawn[len(drawn) % distinct]
    drawn.append(path)
    try:
        os.link(source, path)
    except OSError:             # a file system without hard links
        path.write_bytes(source.read_bytes())


if __name__ == "__main__":
    main()
