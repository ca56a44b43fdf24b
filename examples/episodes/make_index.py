"""Write episodes.jsonl: the index of episodes to process, one line per episode folder.

The real index lists the episode folders under the raw DROID source
(``<lab>/success/<date>/<timestamp>/``, as the download script finds them); this one names 240
made-up episodes of the same shape. Run it again to regenerate the file:

    python make_index.py
"""

import json
import random
from datetime import date, timedelta

LABS = ["AUTOLab", "CLVR", "GuptaLab", "ILIAD", "IPRL", "IRIS", "PennPAL", "RAIL", "REAL", "TRI"]


def main(count: int = 240, path: str = "episodes.jsonl") -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as out:
        for index in range(count):
            day = date(2023, 3, 1) + timedelta(days=rng.randrange(300))
            stamp = f"{day:%a_%b_%d}_{rng.randrange(7, 20):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}_{day.year}"
            lab = rng.choice(LABS)
            episode = {"index": index, "lab": lab, "date": day.isoformat(), "timestamp": stamp,
                       "path": f"{lab}/success/{day.isoformat()}/{stamp}", "frames": rng.randrange(120, 400)}
            out.write(json.dumps(episode) + "\n")


if __name__ == "__main__":
    main()
