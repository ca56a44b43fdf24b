"""A command stage: gets the item through its arguments, writes its result to $CORRAL_RESULT."""

import argparse
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("--policy")
parser.add_argument("--task")
parser.add_argument("--repeat", type=int)
args = parser.parse_args()

item = json.loads(os.environ["CORRAL_ITEM"])
score = (len(args.task) * 7 + args.repeat * 13 + len(args.policy)) % 100 / 100
with open(os.environ["CORRAL_RESULT"], "w") as handle:
    json.dump({"score": score}, handle)
print(f"scored {item} -> {score}")
