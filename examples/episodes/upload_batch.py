"""Upload a batch of finished episodes to the hub: a local folder, or a Hugging Face dataset repo.

    python upload_batch.py --hub local_hub --staging staging --batch 17
    python upload_batch.py --hub hf:me/droid_metadata_only --staging staging --batch 17   # needs HF_TOKEN

The episodes come from $CORRAL_ITEMS (the batch corral hands the command). Episodes the hub
already holds are left out, so a batch sent again, or a new run over the same episodes, uploads
nothing twice. Each batch adds ``batches/<batch>.json`` to the hub, listing what it uploaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HF_PREFIX = "hf:"
FILES = ["tracks.npz", "intrinsics.json", "extrinsics.json", "robot_state.npz"]


def main() -> int:
    args = _arguments()
    episodes = [entry["params"]["path"] for entry in json.loads(Path(os.environ["CORRAL_ITEMS"]).read_text())]
    if args.hub.startswith(HF_PREFIX):
        hub = HuggingFaceHub(args.hub[len(HF_PREFIX):])
    else:
        hub = FolderHub(Path(args.hub))
    already = hub.episodes()
    new = [episode for episode in episodes if episode not in already]
    print(f"batch {args.batch}: {len(episodes)} episodes, {len(episodes) - len(new)} already on the hub, "
          f"uploading {len(new)}")
    if not new:
        return 0
    with tempfile.TemporaryDirectory(prefix="upload-") as folder:
        batch = Path(folder)
        for episode in new:
            (batch / episode).mkdir(parents=True)
            for name in FILES:
                shutil.copy2(Path(args.staging) / episode / name, batch / episode / name)
        (batch / "batches").mkdir()
        (batch / "batches" / f"{args.batch}.json").write_text(json.dumps({"batch": args.batch, "episodes": new}))
        hub.upload(batch, f"batch {args.batch}: {len(new)} episodes")
    return 0


class FolderHub:
    """A folder standing in for the hub (the default): the batch's files are copied into it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def episodes(self) -> set[str]:
        # What the batch lists exist counts as uploaded: the list is written after the files.
        listed: set[str] = set()
        for path in sorted(self.root.glob("batches/*.json")):
            listed.update(json.loads(path.read_text())["episodes"])
        return listed

    def upload(self, batch: Path, message: str) -> None:
        lists = sorted((batch / "batches").iterdir())
        shutil.copytree(batch, self.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("batches"))
        (self.root / "batches").mkdir(parents=True, exist_ok=True)
        for path in lists:
            partial = self.root / "batches" / (path.name + ".partial")
            shutil.copy2(path, partial)
            os.replace(partial, self.root / "batches" / path.name)


class HuggingFaceHub:
    """A dataset repo on the Hugging Face Hub; one upload_folder call (one commit) per batch."""

    def __init__(self, repo_id: str) -> None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            print("error: uploading to the Hugging Face Hub needs huggingface_hub: pip install 'huggingface_hub>=0.20'",
                  file=sys.stderr)
            raise SystemExit(3) from None
        self.repo_id = repo_id
        self.api = HfApi(token=os.environ.get("HF_TOKEN"))

    def episodes(self) -> set[str]:
        self.api.create_repo(self.repo_id, repo_type="dataset", private=True, exist_ok=True)
        # A commit is all or nothing, so an episode whose tracks.npz is there is complete.
        files = self.api.list_repo_files(self.repo_id, repo_type="dataset")
        return {name[: -len("/tracks.npz")] for name in files if name.endswith("/tracks.npz")}

    def upload(self, batch: Path, message: str) -> None:
        self.api.upload_folder(folder_path=str(batch), repo_id=self.repo_id, repo_type="dataset",
                               commit_message=message)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", required=True, help="a folder, or hf:<user>/<dataset repo>")
    parser.add_argument("--staging", required=True, help="the folder holding the processed episodes")
    parser.add_argument("--batch", required=True, help="a name for this batch (corral's task id)")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
