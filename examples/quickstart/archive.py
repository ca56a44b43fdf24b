"""A command stage run per batch: $CORRAL_ITEMS names a JSON list of the batch's items.

It appends them to one JSONL shard per batch (where a real pipeline would upload the outputs) and
writes a small result to $CORRAL_RESULT.
"""

import argparse
import json
import os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="archive")
args = parser.parse_args()

items = json.loads(Path(os.environ["CORRAL_ITEMS"]).read_text())
out = Path(args.out)
out.mkdir(exist_ok=True)
shard = out / f"{os.environ['CORRAL_RUN_ID']}-{os.environ['CORRAL_TASK_ID']}.jsonl"
with open(shard, "w") as handle:
    for item in items:
        handle.write(json.dumps(item) + "\n")
with open(os.environ["CORRAL_RESULT"], "w") as handle:
    json.dump({"archived": len(items), "shard": str(shard)}, handle)
print(f"archived {len(items)} episodes into {shard}")
