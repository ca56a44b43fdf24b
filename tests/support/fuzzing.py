"""Seeded generator of hostile command lines and campaign files for corral's fuzz suite.

A case is (category, label, campaign files, argv). ``label`` names the hostile class (for example
``option:--output=directory``) so that a class can be counted, replayed and, while its fix lives on
another branch, excluded by name. ``@SANDBOX@`` in argv or files stands for the case's sandbox
folder (the parent of the campaign folder): no case names a path outside it.

Only cheap commands are generated: ``check``, ``run --dry-run``, reads of an existing ledger
(status, export, logs, report, runs), and ``run -q`` on two items of ``true`` stages.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

SANDBOX = "@SANDBOX@"
CATEGORIES = ("campaign", "override", "option", "ledger_url", "run")


@dataclass
class Case:
    category: str
    label: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    with_run: bool = False  # start from a campaign folder that already holds a finished run
    timeout_s: float = 60.0

    def replay(self) -> str:
        head = self.files.get("corral.yaml", b"")[:1500]
        return (f"[{self.category}] {self.label}\n  argv: {self.argv!r}\n  with_run: {self.with_run}\n"
                f"  corral.yaml: {head!r}")


# -- valid starting points, shaped like examples/quickstart ---------------------------------------------

def _grid_campaign() -> dict[str, Any]:
    return {"name": "quick", "params": {"seed": 0},
            "items": {"grid": {"policy": ["random", "scripted"], "setting": ["clean", "noise"],
                               "repeat": {"range": [0, 2]}},
                      "key": "{policy}/{setting}/{repeat}"},
            "stages": {"episode": {"run": ["true"], "timeout": "30s", "retries": {"max": 1, "backoff": "1s"}},
                       "archive": {"needs": "episode", "per": "batch", "size": 2, "run": ["true"]},
                       "summary": {"per": "all", "needs": "archive", "run": ["true"]}},
            "backends": {"local": {"workers": 2, "gpus": "none"}}}


def _list_campaign() -> dict[str, Any]:
    return {"name": "listed",
            "items": {"list": [{"prompt": "a", "n": 1}, {"prompt": "b", "n": 2}, {"prompt": "c", "n": 3}],
                      "key": "{prompt}-{n}"},
            "stages": {"make": {"run": ["true"], "outputs": "out/{item_key}.txt"},
                       "score": {"needs": "make", "run": ["true"], "skip_if": "done/{item_key}"}},
            "backends": {"local": {"workers": 1, "gpus": "none"}}}


def _from_campaign() -> dict[str, Any]:
    return {"name": "rows",
            "items": {"from": {"path": "rows.jsonl", "where": "split == 'test'"},
                      "zip": {"seed": [0, 1]}},
            "stages": {"eval": {"run": ["true"], "timeout": "10s"}},
            "backends": {"local": {"workers": 2, "gpus": "none"}}}


ROWS_JSONL = b'{"id": 1, "split": "test"}\n{"id": 2, "split": "dev"}\n{"id": 3, "split": "test"}\n'
BASES: tuple[Callable[[], dict[str, Any]], ...] = (_grid_campaign, _list_campaign, _from_campaign)


def dump(config: Any) -> bytes:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=10**6).encode()


def valid_files(rng: random.Random) -> dict[str, bytes]:
    return {"corral.yaml": dump(rng.choice(BASES)()), "rows.jsonl": ROWS_JSONL}


# -- hostile values -------------------------------------------------------------------------------------

def hostile_value(rng: random.Random) -> tuple[str, Any]:
    """(label, value): a value of the wrong type, size or content for wherever it lands."""
    choices: list[tuple[str, Any]] = [
        ("null", None), ("bool", True), ("zero", 0), ("negative", -5), ("huge int", 10**30),
        ("1e12", 10**12), ("float", 1e308), ("nan", float("nan")), ("inf", float("-inf")),
        ("empty string", ""), ("long string", "x" * rng.choice([300, 5000, 200_000])),
        ("unicode", "é‮ñ漢\U0001F600"), ("control chars", "a\x01b\x1bc\r\n"), ("NUL", "a\x00b"),
        ("empty list", []), ("empty mapping", {}), ("list", [1, "two", None]), ("mapping", {"a": {"b": 1}}),
        ("deep list", _deep(rng.choice([20, 60]))), ("path traversal", "../../escape"),
        ("absolute path", f"{SANDBOX}/abs"), ("home path", "~nouser/x"), ("format spec", "{x:%Y}"),
        ("brace", "{"), ("interpolation", "${nope.nope}"), ("env interpolation", "${oc.env:NOPE_NOPE}"),
        ("duration", rng.choice(["0s", "-1s", "1e308s", "nans", "5 parsecs", "999999999999d"])),
        ("range", {"range": rng.choice([[0, 0], [5, 0], [0, 10, 0], [0, 10**12], [0, 10**30], "x", [1, 2, 3, 4]])}),
        ("where", "x" * 5000 if rng.random() < 0.3 else rng.choice(["__import__('os')", "1/0", "(", "id ==="])),
    ]
    return rng.choice(choices)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# Keys the campaign file knows, with the paths where they live: mutations aim here half the time.
KNOWN_PATHS = [
    ("name",), ("workdir",), ("ledger",), ("params",), ("params", "seed"), ("defaults",), ("items",),
    ("items", "key"), ("items", "grid"), ("items", "grid", "repeat"), ("items", "grid", "repeat", "range"),
    ("items", "list"), ("items", "zip"), ("items", "from"), ("items", "from", "path"), ("items", "from", "where"),
    ("stages",), ("stages", "episode"), ("stages", "episode", "run"), ("stages", "episode", "timeout"),
    ("stages", "episode", "retries"), ("stages", "episode", "retries", "max"), ("stages", "episode", "per"),
    ("stages", "archive", "size"), ("stages", "archive", "needs"), ("stages", "summary", "per"),
    ("stages", "make", "outputs"), ("stages", "score", "skip_if"), ("stages", "eval", "mem"),
    ("stages", "eval", "gpus"), ("stages", "eval", "call"), ("stages", "eval", "env"),
    ("backends",), ("backends", "local"), ("backends", "local", "workers"), ("backends", "local", "gpus"),
    ("backends", "local", "type"), ("backends", "local", "python"), ("backends", "extra", "type"),
    ("report",), ("results",),
]


def _paths(config: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(config, dict):
        for key, value in config.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(config, list):
        for index, value in enumerate(config[:4]):
            found += _paths(value, prefix + (index,))
    return found


def _set(config: dict, path: tuple, value: Any) -> None:
    node: Any = config
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {}) if not isinstance(node.get(key), (dict, list)) else node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value


def _delete(config: dict, path: tuple) -> None:
    node: Any = config
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        del node[path[-1]]


def mutate_structure(rng: random.Random, config: dict) -> str:
    """Change the parsed campaign in place; return what was done."""
    existing = _paths(config)
    path = rng.choice(KNOWN_PATHS) if rng.random() < 0.5 or not existing else rng.choice(existing)
    move = rng.random()
    if move < 0.2 and path in existing:
        _delete(config, path)
        return "delete key"
    if move < 0.3:
        _set(config, path[:-1] + (rng.choice(["nope", "x" * 300, "é", "", "a.b", "0"]),), 1)
        return "unknown key"
    if move < 0.4 and path in existing:
        node: Any = config
        for key in path:
            node = node[key]
        _set(config, path, [copy.deepcopy(node)] if not isinstance(node, list) else {"as": "mapping"})
        return "retype key"
    label, value = hostile_value(rng)
    _set(config, path, value)
    return label


def mutate_text(rng: random.Random, text: bytes) -> tuple[str, bytes]:
    """Damage the campaign file as bytes."""
    lines = text.split(b"\n")
    move = rng.randrange(10)
    if move == 0:
        return "truncated", text[:rng.randrange(max(1, len(text)))]
    if move == 1:
        at = rng.randrange(len(text) + 1)
        junk = rng.choice([b":", b"[", b"{", b"&", b"*", b"\t", b"- ", b"!!python/object:os.system ", b"%", b"|",
                           b"'", b'"', b"? ", b"---\n", b"...\n", b"<<: *x\n"])
        return "yaml syntax damage", text[:at] + junk + text[at:]
    if move == 2:
        index = rng.randrange(len(lines))
        return "duplicate key", b"\n".join(lines[:index + 1] + [lines[index]] + lines[index + 1:])
    if move == 3:
        at = rng.randrange(len(text) + 1)
        return "non-UTF-8 bytes", text[:at] + rng.choice([b"\xff\xfe", b"\xc3", b"\x80\x80", b"\xed\xa0\x80"]) + text[at:]
    if move == 4:
        bomb = b'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + b"".join(
            b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((98 + i, 98 + i) + (97 + i,) * 9) for i in range(8))
        return "alias bomb", text + b"\n" + bomb
    if move == 5:
        depth = rng.choice([100, 1000, 20000])
        return "deep nesting", text + b"\ndeep: " + b"[" * depth + b"]" * depth + b"\n"
    if move == 6:
        return "BOM and CRLF", b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n")
    if move == 7:
        return "anchors and aliases", text.replace(b"stages:", b"stages: &s", 1) + b"\nextra: *s\n"
    if move == 8:
        return "NUL byte", text[:len(text) // 2] + b"\x00" + text[len(text) // 2:]
    return "not a mapping", rng.choice([b"", b"- 1\n- 2\n", b"42\n", b"~\n", b"\"just a string\"\n"])


def campaign_case(rng: random.Random) -> Case:
    config = rng.choice(BASES)()
    if rng.random() < 0.65:
        labels = [mutate_structure(rng, config) for _ in range(rng.choice([1, 1, 2, 3]))]
        text = dump(config)
        label = "+".join(labels)
    else:
        label, text = mutate_text(rng, dump(config))
    argv = rng.choice([["check"], ["check", "corral.yaml"], ["check", "--json"], ["run", "--dry-run"]])
    return Case("campaign", label, argv, {"corral.yaml": text, "rows.jsonl": ROWS_JSONL})


# -- overrides -----------------------------------------------------------------------------------------

OVERRIDE_KEYS = ["params.seed", "items.grid.repeat", "items.grid.repeat.range", "items.grid.policy", "name",
                 "workdir", "stages.episode.timeout", "stages.episode.run", "stages.archive.size",
                 "backends.local.workers", "items.key", "items.list", "items.from.where", "items", "stages",
                 "defaults", "preset", "items.grid.x.0", "params.seed.deep.er"]
OVERRIDE_VALUES = ["1", "-1", "0", "nan", "1e308", str(10**30), "", "[]", "[1,2]", "{}", "{range: [0, 10]}",
                   "{range: [0, 1000000000000]}", "{range: [0, 10, 0]}", "null", "'quoted", "\"x", "a,b,c",
                   "range(0,3)", "choice(1,2)", "glob(*)", "interval(0,1)", "${nope}", "${oc.env:HOME}",
                   "=/etc/passwd", "x" * 3000, "é漢", "a\x00b", "[[[[[[[[[[1]]]]]]]]]]", "{a: {b: [1, {c: 2}]}}",
                   "5 parsecs", "true", "~"]


def override_string(rng: random.Random) -> tuple[str, str]:
    shape = rng.randrange(8)
    key = rng.choice(OVERRIDE_KEYS)
    value = rng.choice(OVERRIDE_VALUES)
    if shape == 0:
        return "long key", "k" * rng.choice([300, 3000]) + "=1"
    if shape == 1:
        return "delete", "~" + key + rng.choice(["", "=" + value])
    if shape == 2:
        return "add", rng.choice(["+", "++"]) + rng.choice([key, "new.key", ""]) + "=" + value
    if shape == 3:
        return "package", rng.choice(["@items=0", f"{key}@pkg=1", "preset@_global_=smoke", "@=", "+preset@x=y"])
    if shape == 4:
        return "sweep", f"{key}={value},{rng.choice(OVERRIDE_VALUES)}"
    if shape == 5:
        return "grammar fragment", rng.choice(["=", "==", "a==b", "a=b=c", "[", "a.=1", ".a=1", "a..b=1", "a[0]=1",
                                               "a=[", "a={", "a=)", "a=\\", "+=/etc/passwd", "~=", "a b=1",
                                               "hydra.run.dir=x", "hydra/launcher=x"])
    return "set", f"{key}={value}"


def override_case(rng: random.Random) -> Case:
    labels, overrides = zip(*[override_string(rng) for _ in range(rng.choice([1, 1, 2, 3]))])
    argv = [rng.choice(["check", "check"])] + rng.choice([[], ["corral.yaml"]]) + list(overrides)
    return Case("override", "+".join(labels), argv, valid_files(rng))


# -- options of every command --------------------------------------------------------------------------

def _number(rng: random.Random) -> str:
    return rng.choice(["-1", "0", "2", "nan", "inf", "1e308", str(10**20), "x", "", "1.5"])


def _output_path(rng: random.Random) -> tuple[str, str]:
    return rng.choice([
        ("file", "out.data"), ("file above the campaign", "../out-above.data"),
        ("sandbox absolute", f"{SANDBOX}/abs-out.data"),
        ("directory", "."), ("directory", ".corral"), ("directory", SANDBOX), ("empty", ""),
        ("missing folder", "missing/dir/out.data"), ("long name", "o" * 300),
        ("campaign file itself", "corral.yaml"), ("NUL", "a\x00b"), ("newline", "a\nb.csv"),
    ])


def _text(rng: random.Random) -> str:
    return rng.choice(["episode", "summary", "nope", "", "x" * 3000, "é漢", "a\x01b", "--", "-x", "done", "failed",
                       "r1", "t1", "1", "$(id)", "../x"])


def _shard(rng: random.Random) -> str:
    return rng.choice(["1/2", "0/2", "2/2", "3/2", "0/0", "-1/2", "a/b", "1", "1/2/3", str(10**30) + "/2", ""])


def _where(rng: random.Random) -> str:
    return rng.choice(["status=finished", "params.seed=0", "a=b", "=", "x", "a!=b", "a=b|c", "k" * 3000 + "=1",
                       "id=", "tag.x=é", "\x00=1"])


def _task(rng: random.Random) -> str:
    return rng.choice(["t1", "t2", "t0", "t-1", "t99999999999999999999", "t", "", "random/clean/0", "nope",
                       "t1.5", "T1", "tx", "é", "x" * 3000])


COMMON = {"--ledger": None, "--json": "flag", "--run-id": _text}
OPTIONS: dict[str, dict[str, Any]] = {
    "check": {"--limit": _number, "--shard": _shard, "--json": "flag"},
    "run --dry-run": {"--limit": _number, "--shard": _shard, "--new": "flag", "--tag": _where},
    "status": {"--run-id": _text, "--submissions": "flag", "--format": _text, "--output": _output_path,
               "--json": "flag"},
    "logs": {"--run-id": _text, "--stage": _text, "--all": "flag"},
    "export": {"--run-id": _text, "--format": lambda rng: rng.choice(["json", "jsonl", "csv", "parquet", "nope", ""]),
               "--output": _output_path, "--stage": _text, "--state": _text},
    "report": {"--run-id": _text, "--where": _where, "--by": _text, "--metric": _text, "--stage": _text,
               "--format": lambda rng: rng.choice(["table", "json", "md", "csv", "latex", "html", "png", "nope"]),
               "--output": _output_path, "--plot": _output_path, "--compare": "flag", "--pool": "flag"},
    "runs": {"--where": _where, "--all": "flag", "--format": _text, "--output": _output_path, "--json": "flag"},
    "retry": {"--run-id": _text, "--stage": _text, "--error-class": _text, "--cancelled": "flag", "--json": "flag"},
    "cancel": {"--run-id": _text, "--stage": _text, "--json": "flag"},
    "init": {"--force": "flag"},
    "ingest": {"--campaign": lambda rng: rng.choice(["corral.yaml", "nope.yaml", "", "."]), "--json": "flag"},
}
RUNS_SUBCOMMANDS = [["show", "r1"], ["show", "nope"], ["diff", "r1", "r2"], ["diff", "r1"], ["tag", "r1", "k=v"],
                    ["tag", "r1", "=v"], ["tag", "nope", "k=v"], ["note", "r1", "é" * 50], ["latest"],
                    ["merge", "r1", "--into", "merged"], ["merge", "r1", "nope", "--into", "m"],
                    ["merge", "r1", "--into", "../../x"], ["merge", "r1", "--into", ""], ["bogus"], []]


def option_case(rng: random.Random) -> Case:
    command = rng.choice(list(OPTIONS))
    argv = command.split()
    labels = []
    if command == "logs":
        argv.append(_task(rng))
    elif command == "runs":
        argv += rng.choice(RUNS_SUBCOMMANDS)
    elif command == "init":
        label, target = rng.choice([("new folder", "new"), ("existing folder", "."), ("a file", "corral.yaml"),
                                    ("folder above", "../init-above"), ("missing parents", "a/b/c"),
                                    ("long name", "i" * 300), ("empty", "")])
        argv.append(target)
        labels.append(f"init {label}")
    elif command == "ingest":
        label, source = rng.choice([("ledger", ".corral/ledger.db"), ("missing", "nope.db"), ("campaign file", "corral.yaml"),
                                    ("folder", "."), ("device-like", "rows.jsonl"), ("empty", "")])
        argv.append(source)
        labels.append(f"ingest {label}")
    for _ in range(rng.choice([1, 1, 2, 3])):
        option, make = rng.choice(list(OPTIONS[command].items()))
        if make == "flag":
            argv.append(option)
            labels.append(option)
        elif make is _output_path:
            label, value = make(rng)
            argv += [option, value]
            labels.append(f"{option}={label}")
        else:
            argv += [option, make(rng)]
            labels.append(option)
    if rng.random() < 0.05:
        argv.append(rng.choice(["--nope", "-z", "--limit", "extra", "a=b", "--help"]))
        labels.append("stray argument")
    return Case("option", f"{command}: " + " ".join(labels), argv, valid_files(rng), with_run=rng.random() < 0.8)


# -- ledger URLs ---------------------------------------------------------------------------------------

LEDGER_URLS = [
    ("scheme only", "sqlite://"), ("scheme only", "http://"), ("unknown scheme", "foo://bar"), ("no scheme", "://"),
    ("unknown scheme", "mysql://u@127.0.0.1:1/x"), ("postgres refused", "postgresql+psycopg://u@127.0.0.1:1/x"),
    ("postgres no host", "postgresql+psycopg://"), ("proc path", "/proc/self/nonexistent/ledger.db"),
    ("sqlite path", "ledger2.db"), ("sqlite url", f"sqlite:///{SANDBOX}/url.db"), ("directory", "."),
    ("directory", SANDBOX), ("campaign file", "corral.yaml"), ("data file", "rows.jsonl"), ("empty", ""),
    ("long name", "l" * 300 + ".db"), ("missing folder", "missing/dir/ledger.db"), ("NUL", "a\x00b.db"),
    ("above the campaign", "../above.db"), ("query string", "sqlite:///x.db?mode=ro&nope=1"),
]


def ledger_url_case(rng: random.Random) -> Case:
    label, url = rng.choice(LEDGER_URLS)
    command = rng.choice([["check"], ["status"], ["export"], ["runs"], ["run", "--dry-run"], ["report"]])
    if rng.random() < 0.5:
        files = valid_files(rng)
        config = yaml.safe_load(files["corral.yaml"])
        config["ledger"] = url
        files["corral.yaml"] = dump(config)
        return Case("ledger_url", f"campaign ledger: {label}", command, files)
    return Case("ledger_url", f"--ledger: {label}", command + ["--ledger", url], valid_files(rng),
                with_run=rng.random() < 0.3)


# -- real runs of two trivial items --------------------------------------------------------------------

RUN_MUTATIONS = [
    (("stages", "episode", "timeout"), ["0s", "1e308s", "nan", 0, -1, "1ms"]),
    (("stages", "episode", "retries", "max"), [0, -1, 10**30, "x"]),
    (("stages", "archive", "size"), [0, -1, 10**30, 1]),
    (("backends", "local", "workers"), [0, -1, 10**30, 1]),
    (("backends", "local", "gpus"), ["none", [-1], "all", [0, 0]]),
    (("stages", "episode", "mem"), [-5, "5GB", "nan"]),
    (("stages", "episode", "run"), [["false"], ["/nonexistent/program"], ["sh", "-c", "exit 3"], []]),
    (("items", "grid", "policy"), [[], ["a/../../b"], ["x" * 300], ["$(id)"]]),
    (("items", "key"), ["{policy}", "{nope}", "{policy:%Y}", "../{policy}"]),
]


def run_case(rng: random.Random) -> Case:
    config = _grid_campaign()
    path, values = rng.choice(RUN_MUTATIONS)
    value = rng.choice(values)
    _set(config, path, value)
    argv = ["run", "-q", "--limit", "2"] + rng.choice([[], ["--new"], ["--tag", "k=v"]])
    return Case("run", f"run with {'.'.join(map(str, path))}={str(value)[:40]}", argv,
                {"corral.yaml": dump(config), "rows.jsonl": ROWS_JSONL}, timeout_s=90.0)


MAKERS: dict[str, tuple[float, Callable[[random.Random], Case]]] = {
    "campaign": (0.45, campaign_case), "override": (0.2, override_case), "option": (0.25, option_case),
    "ledger_url": (0.08, ledger_url_case), "run": (0.02, run_case),
}


def generate(seed: int, count: int) -> list[Case]:
    """``count`` cases, the same for the same seed."""
    rng = random.Random(seed)
    names = list(MAKERS)
    weights = [MAKERS[name][0] for name in names]
    return [MAKERS[rng.choices(names, weights)[0]][1](rng) for _ in range(count)]
