"""Runs fuzz cases against corral's CLI, in process or as real processes, and judges each one.

Every case runs in a fresh sandbox: ``SANDBOX/campaign`` is the working directory and holds the
campaign files; HOME and TMPDIR point inside the sandbox. The sandbox outside the campaign folder
is compared before and after: only paths the command line names (and SQLite's companions of a
named ledger) may appear or change there.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from support.fuzzing import SANDBOX, Case

ALLOWED_EXIT_CODES = {0, 1, 2}
CAMPAIGN_FOLDER = "campaign"


class CaseTimeout(BaseException):
    """Raised in the main thread when a case runs past its limit (not an Exception: corral must not catch it)."""


@dataclass
class Outcome:
    case: Case
    code: int | None
    output: str
    problems: list[str] = field(default_factory=list)
    signature: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def _fill(text: str, sandbox: Path) -> str:
    return text.replace(SANDBOX, str(sandbox))


def _snapshot(sandbox: Path) -> dict[str, tuple[int, int]]:
    seen: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(sandbox):
        relative = os.path.relpath(folder, sandbox)
        if relative == CAMPAIGN_FOLDER or relative.startswith(CAMPAIGN_FOLDER + os.sep):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            is_dir = os.path.isdir(path)
            seen[os.path.relpath(path, sandbox)] = (0 if is_dir else info.st_size, 0 if is_dir else info.st_mtime_ns)
    return seen


def _named_paths(argv: list[str], files: dict[str, bytes], cwd: Path) -> list[str]:
    """Every path a case names (arguments, `key=value` values, a campaign's ledger: or workdir:)."""
    tokens = list(argv)
    for arg in argv:
        if "=" in arg:
            tokens.append(arg.split("=", 1)[1])
    for match in re.finditer(rb"^\s*(?:ledger|workdir|path):\s*(.+)$", files.get("corral.yaml", b""), re.M):
        tokens.append(match.group(1).decode(errors="replace").strip().strip("'\""))
    named = []
    for token in tokens:
        if not token or "\x00" in token:
            continue
        token = re.sub(r"^sqlite:/{2,3}", "/" if token.startswith("sqlite:////") else "", token).split("?")[0]
        with contextlib.suppress(ValueError, OSError):
            named.append(os.path.normpath(os.path.join(cwd, os.path.expanduser(token))))
    return named


#: what libraries keep in the user's home (matplotlib's font list when a plot is drawn): not corral's writes
LIBRARY_CACHES = ("home/.cache", "home/.config")


def _outside_writes(before: dict, after: dict, sandbox: Path, named: list[str]) -> list[str]:
    changed = [p for p in after if before.get(p) != after[p]] + [p for p in before if p not in after]
    bad = []
    for relative in changed:
        if relative.startswith(LIBRARY_CACHES):
            continue
        path = os.path.normpath(os.path.join(sandbox, relative))
        if any(path == n or path.startswith(n + os.sep) or path.startswith(n + "-") or n.startswith(path + os.sep)
               for n in named):
            continue
        bad.append(relative)
    return bad


def crash_signature(folder: Path) -> str | None:
    """Exception type and the innermost corral frame of the traceback in .corral/crash.log."""
    log = folder / ".corral" / "crash.log"
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    frames = re.findall(r'File "([^"]*corral[/\\][^"]+)", line (\d+), in (\S+)', text)
    last = text.strip().splitlines()[-1] if text.strip() else "?"
    kind = last.split(":", 1)[0]
    if frames:
        path, line, function = frames[-1]
        where = path.split("src" + os.sep, 1)[-1]
        return f"{kind} at {where}:{function}"
    return kind


class Sandboxes:
    """Fresh sandboxes under ``root``; campaign folders with a finished run are made once per campaign."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0
        self.with_run: dict[bytes, Path] = {}

    def make(self, case: Case) -> Path:
        self.count += 1
        sandbox = self.root / f"s{self.count}"
        folder = sandbox / CAMPAIGN_FOLDER
        if case.with_run:
            shutil.copytree(self._finished(case.files), folder, symlinks=True)
        else:
            folder.mkdir(parents=True)
            for name, data in case.files.items():
                (folder / name).write_bytes(data)
        (sandbox / "home").mkdir()
        (sandbox / "tmp").mkdir()
        return sandbox

    def _finished(self, files: dict[str, bytes]) -> Path:
        key = files["corral.yaml"]
        if key not in self.with_run:
            folder = self.root / f"finished{len(self.with_run)}" / CAMPAIGN_FOLDER
            folder.mkdir(parents=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
            code = subprocess.run([sys.executable, "-m", "corral", "run", "-q", "--limit", "3"], cwd=folder,
                                  env=_environment(folder.parent), capture_output=True, timeout=300).returncode
            assert code in (0, 1), f"could not prepare a finished run in {folder}"
            self.with_run[key] = folder
        return self.with_run[key]


def _environment(sandbox: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(HOME=str(sandbox / "home"), TMPDIR=str(sandbox / "tmp"), COLUMNS="200")
    return env


def judge(case: Case, sandbox: Path, code: int | None, output: str, before: dict) -> Outcome:
    folder = sandbox / CAMPAIGN_FOLDER
    outcome = Outcome(case, code, output)
    if code is None:
        outcome.problems.append(f"no exit within {case.timeout_s:.0f}s")
    elif code not in ALLOWED_EXIT_CODES:
        outcome.problems.append(f"exit code {code}")
    if "Traceback" in output:
        outcome.problems.append("traceback in the output")
    if code == 2 and not case.with_run and (folder / ".corral" / "ledger.db").exists():
        outcome.problems.append("exit 2 but a ledger was created")
    argv = [_fill(a, sandbox) for a in case.argv]
    files = {name: _fill(data.decode(errors="replace"), sandbox).encode() for name, data in case.files.items()}
    written = _outside_writes(before, _snapshot(sandbox), sandbox, _named_paths(argv, files, folder))
    if written:
        outcome.problems.append(f"wrote outside the campaign folder: {sorted(written)[:5]}")
    if code == 3 or outcome.problems:
        outcome.signature = crash_signature(folder) or (outcome.problems[0] if code != 3 else "exit 3, no crash.log")
    return outcome


def _prepare(case: Case, sandboxes: Sandboxes) -> tuple[Path, list[str], dict]:
    sandbox = sandboxes.make(case)
    folder = sandbox / CAMPAIGN_FOLDER
    for name in case.files:
        data = (folder / name).read_bytes()
        if SANDBOX.encode() in data:
            (folder / name).write_bytes(data.replace(SANDBOX.encode(), str(sandbox).encode()))
    return sandbox, [_fill(a, sandbox) for a in case.argv], _snapshot(sandbox)


@contextlib.contextmanager
def _case_context(sandbox: Path, timeout_s: float):
    """cwd, HOME, TMPDIR and a timer for one in-process case; everything is put back afterwards."""
    saved_cwd, saved_env, saved_tempdir = os.getcwd(), dict(os.environ), tempfile.tempdir
    os.chdir(sandbox / CAMPAIGN_FOLDER)
    os.environ.update(_environment(sandbox))
    for name in [k for k in os.environ if k.startswith("CORRAL_")]:
        del os.environ[name]
    tempfile.tempdir = str(sandbox / "tmp")

    def on_alarm(_signum, _frame):
        raise CaseTimeout

    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    previous_int, previous_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = saved_tempdir


def run_in_process(case: Case, sandboxes: Sandboxes) -> Outcome:
    from corral.cli.main import main

    sandbox, argv, before = _prepare(case, sandboxes)
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | None
    with _case_context(sandbox, case.timeout_s):
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(argv)
        except CaseTimeout:
            code = None
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - an escape from main() is the finding itself
            code = -1
            stderr.write(f"main() raised {type(exc).__name__}: {exc}\n")
    outcome = judge(case, sandbox, code, stdout.getvalue() + stderr.getvalue(), before)
    if code == -1:
        outcome.problems.append("main() raised instead of returning an exit code")
    _clean(sandbox, outcome)
    return outcome


def run_as_process(case: Case, sandboxes: Sandboxes) -> Outcome:
    sandbox, argv, before = _prepare(case, sandboxes)
    try:
        done = subprocess.run([sys.executable, "-m", "corral", *argv], cwd=sandbox / CAMPAIGN_FOLDER,
                              env=_environment(sandbox), capture_output=True, timeout=case.timeout_s + 30)
        code, output = done.returncode, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as exc:
        code, output = None, str(exc)
    outcome = judge(case, sandbox, code, output, before)
    _clean(sandbox, outcome)
    return outcome


def _clean(sandbox: Path, outcome: Outcome) -> None:
    if not outcome.failed and outcome.case.category != "run":
        shutil.rmtree(sandbox, ignore_errors=True)


def summary(outcomes: list[Outcome], first: int = 10) -> str:
    by_category = Counter((o.case.category, o.code) for o in outcomes)
    lines = ["exit codes per category:"]
    for category in sorted({o.case.category for o in outcomes}):
        codes = ", ".join(f"{code}: {n}" for (cat, code), n in sorted(by_category.items(), key=lambda kv: str(kv[0][1]))
                          if cat == category)
        lines.append(f"  {category:<11} {sum(n for (c, _), n in by_category.items() if c == category):>6}  ({codes})")
    failed = [o for o in outcomes if o.failed]
    signatures = Counter(o.signature for o in failed)
    lines.append(f"failures: {len(failed)} of {len(outcomes)}; distinct signatures: {len(signatures)}")
    for signature, n in signatures.most_common():
        example = next(o for o in failed if o.signature == signature)
        lines.append(f"  {n:>5} x {signature}\n          e.g. [{example.case.category}] {example.case.label[:100]}")
    for outcome in failed[:first]:
        lines.append(f"--- {'; '.join(outcome.problems)}\n{outcome.case.replay()}\n  output: {outcome.output[-600:]!r}")
    return "\n".join(lines)
