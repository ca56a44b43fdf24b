#!/usr/bin/env bash
# Validate one processed episode folder.
#   ./verify_pipeline_outputs.sh /data/droid_staging/Lab/success/date/timestamp/
# Exits 0 when every check passes, 1 otherwise.
set -u
EPISODE_DIR="${1:?usage: verify_pipeline_outputs.sh EPISODE_DIR}"
PYTHON_BIN="${PYTHON:-python3}"

fail() { echo "❌ $*"; exit 1; }

[ -d "$EPISODE_DIR" ] || fail "Episode folder not found: $EPISODE_DIR"
for f in tracks.npz intrinsics.json extrinsics.json robot_state.npz; do
    [ -s "$EPISODE_DIR/$f" ] || fail "Missing or empty: $EPISODE_DIR/$f"
done

"$PYTHON_BIN" - "$EPISODE_DIR" <<'PY' || exit 1
import json, sys
import numpy as np

d = sys.argv[1]
def fail(msg):
    print(f"❌ {msg}")
    sys.exit(1)

try:
    t = np.load(f"{d}/tracks.npz")
except Exception as e:
    fail(f"tracks.npz unreadable: {e}")

tr = t["tracks_3d"] if "tracks_3d" in t else fail("tracks_3d missing")
if tr.ndim != 3 or tr.shape[2] != 3 or tr.shape[0] < 2 or not np.isfinite(tr).all():
    fail(f"3D tracks malformed: shape {tr.shape}")
T, N, _ = tr.shape
print("✅ 3D tracks data complete")

fl = t["normalized_flow"] if "normalized_flow" in t else fail("normalized_flow missing")
dist = t["flow_distances_m"] if "flow_distances_m" in t else fail("flow_distances_m missing")
if fl.ndim != 3 or fl.shape[1:] != (N, 3) or fl.shape[0] != dist.shape[0] or fl.shape[0] < 1:
    fail(f"Normalized flow malformed: shape {fl.shape}")
if not np.allclose(np.diff(dist), 0.001):
    fail("Normalized flow not at 1mm steps")
print(f"✅ Normalized flow data complete (M={fl.shape[0]} steps, {dist[-1] * 1000:.1f}mm total)")

cams = sorted(k[len("tracks_2d_"):] for k in t.files if k.startswith("tracks_2d_"))
if not cams:
    fail("No 2D projections")
for c in cams:
    if t[f"tracks_2d_{c}"].shape != (T, N, 2):
        fail(f"2D projection for {c} malformed: shape {t[f'tracks_2d_{c}'].shape}")
print(f"✅ 2D projections for {len(cams)} camera(s)")

if not all(f"intrinsics_{c}" in t for c in cams):
    fail("Camera intrinsics missing from tracks.npz")
print("✅ Camera intrinsics included in tracks.npz")

ex = json.load(open(f"{d}/extrinsics.json"))
ext = ex.get("external", {})
if len(ext) != len(cams):
    fail(f"External cameras: {len(ext)} extrinsics for {len(cams)} projected camera(s)")
print(f"✅ External cameras: {len(ext)}")
w = ex.get("wrist") or fail("Wrist camera extrinsics missing")
if w.get("frames") != T:
    fail(f"Wrist camera: {w.get('serial')} has {w.get('frames')} frames, tracks have {T}")
print(f"✅ Wrist camera: {w['serial']} ({T} frames)")
PY
