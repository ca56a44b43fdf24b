"""A stand-in for the per-episode GPU pipeline (intrinsics from the SVO files, 3D gripper tracks,
2D projections per camera, normalized flow): it writes outputs of the real layout and shapes, small.

    python process_episode.py --episode AUTOLab/success/2023-09-14/Thu_Sep_14_19:56:26_2023 \
        --index 0 --frames 252 --out staging/AUTOLab/success/... [--seconds 0.5] [--fail-once 3,7]

Like the ZED SDK, it refuses to start without a GPU (CUDA_VISIBLE_DEVICES empty or unset).
Episodes listed in --fail-once fail on their first try (a marker file under .stand-in/ remembers
the try), as an episode does when the SDK cannot open its SVO file; the next try succeeds.
Each try appends a record (GPU, pid, start and end) to .stand-in/timings/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

CAMERAS = ["ext1", "ext2"]
POINTS = 3          # gripper contact points tracked: centroid, left, right
STEP_M = 0.001      # normalized flow: one sample per 1 mm of travel


def main() -> int:
    args = _arguments()
    started = time.time()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    record = {"index": args.index, "episode": args.episode, "gpu": gpu, "pid": os.getpid(), "start": started}
    try:
        if not gpu:
            raise RuntimeError("NO GPU DETECTED: the ZED SDK needs CUDA even to read intrinsics")
        marker = Path(".stand-in/failed-once") / str(args.index)
        if args.index in _indices(args.fail_once) and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"CAMERA NOT DETECTED: cannot open the SVO files of {args.episode}")
        time.sleep(args.seconds)
        _write_outputs(Path(args.out), args.index, args.frames)
        record["status"] = "done"
        return 0
    except RuntimeError as exc:
        record["status"] = "failed"
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        record["end"] = time.time()
        timings = Path(".stand-in/timings")
        timings.mkdir(parents=True, exist_ok=True)
        (timings / f"{args.index}-{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(record))


def _write_outputs(out: Path, index: int, frames: int) -> None:
    rng = np.random.default_rng(index)
    out.mkdir(parents=True, exist_ok=True)
    steps = rng.normal(0, 0.004, size=(frames, POINTS, 3))
    tracks_3d = np.cumsum(steps, axis=0) + np.array([0.5, 0.0, 0.3])
    travel = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(tracks_3d[:, 0], axis=0), axis=1))])
    distances = np.arange(0.0, travel[-1], STEP_M)
    flow = np.stack([np.stack([np.interp(distances, travel, tracks_3d[:, p, axis]) for axis in range(3)], axis=1)
                     for p in range(POINTS)], axis=1)
    intrinsics = {camera: {"fx": 522.4 + i, "fy": 522.4 + i, "cx": 640.0, "cy": 360.0,
                           "distortion": [0.0] * 5, "width": 1280, "height": 720}
                  for i, camera in enumerate(CAMERAS + ["wrist"])}
    arrays = {"tracks_3d": tracks_3d, "normalized_flow": flow, "flow_distances_m": distances,
              "contact_frames": np.array([0, frames // 3, 2 * frames // 3])}
    for camera in CAMERAS:
        k = intrinsics[camera]
        arrays[f"tracks_2d_{camera}"] = np.stack([k["fx"] * tracks_3d[..., 0] / tracks_3d[..., 2] + k["cx"],
                                                  k["fy"] * tracks_3d[..., 1] / tracks_3d[..., 2] + k["cy"]], axis=-1)
        arrays[f"intrinsics_{camera}"] = np.array([k["fx"], k["fy"], k["cx"], k["cy"]])
    (out / "intrinsics.json").write_text(json.dumps(intrinsics, indent=1))
    (out / "extrinsics.json").write_text(json.dumps(
        {"external": {camera: rng.normal(size=6).round(4).tolist() for camera in CAMERAS},
         "wrist": {"serial": f"1{index:07d}", "frames": frames}}, indent=1))
    np.savez(out / "robot_state.npz", cartesian=rng.normal(size=(frames, 6)), gripper=rng.random(frames))
    # tracks.npz last, renamed into place: its presence means the episode is complete.
    partial = out / "tracks.partial.npz"
    np.savez(partial, **arrays)
    os.replace(partial, out / "tracks.npz")


def _indices(text: str) -> set[int]:
    return {int(part) for part in text.split(",") if part.strip()}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episode", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long one episode takes")
    parser.add_argument("--fail-once", default="", help="episode indices that fail on their first try")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
