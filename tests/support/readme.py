"""Run the commands of an example's README as written, in a copy of the example folder.

A README marks a block of commands that a test runs with an HTML comment on the line before the
fence::

    <!-- test: smoke -->
    ```bash
    corral check +preset=smoke
    corral run +preset=smoke
    ```

Each line of the block is one shell command (``#`` lines are skipped, a trailing ``\\`` joins lines),
run with bash in the copied folder, with ``corral`` on PATH starting this interpreter's corral and
``python`` this interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLES = REPOSITORY / "examples"


@dataclass
class CommandResult:
    command: str
    returncode: int
    stdout: str
    stderr: str


def readme_block(readme: Path, name: str) -> list[str]:
    """The commands of the block marked ``<!-- test: NAME -->`` in ``readme``."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if re.fullmatch(rf"\s*<!--\s*test:\s*{re.escape(name)}\s*-->\s*", line):
            break
    else:
        raise AssertionError(f"{readme} has no block marked <!-- test: {name} -->")
    fence = index + 1
    assert lines[fence].lstrip().startswith("```"), f"{readme}: the line after the marker {name!r} is not a fence"
    commands, pending = [], ""
    for line in lines[fence + 1:]:
        if line.lstrip().startswith("```"):
            break
        text = line.strip()
        if not pending and (not text or text.startswith("#")):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        commands.append(pending + text)
        pending = ""
    assert commands, f"{readme}: the block {name!r} is empty"
    return commands


def copy_example(name: str, destination: Path) -> Path:
    """A copy of ``examples/NAME`` without its run state, as a newcomer's clone has it."""
    folder = destination / name
    shutil.copytree(EXAMPLES / name, folder,
                    ignore=shutil.ignore_patterns(".corral", "__pycache__", "results", "*.pyc", ".env"))
    return folder


def corral_on_path(folder: Path) -> Path:
    """A folder holding a ``corral`` command that runs this interpreter's corral."""
    bin_dir = folder / ".test-bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "corral"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m corral \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    for python in ("python", "python3"):
        # A script, not a symlink: a link to a virtual environment's python outside its bin/ folder
        # starts the base interpreter, without the environment's packages.
        (bin_dir / python).write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        (bin_dir / python).chmod(shim.stat().st_mode)
    return bin_dir


def run_readme_block(folder: Path, readme: Path, name: str, env: dict[str, str] | None = None,
                     timeout: float = 600, expect_ok: bool = True) -> list[CommandResult]:
    """Run each command of the block in ``folder``; with ``expect_ok`` each must exit 0."""
    from conftest import cli_env

    environment = cli_env(env)
    bin_dir = corral_on_path(folder.parent)
    environment["PATH"] = f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}"
    environment["PYTHON"] = sys.executable
    results = []
    for command in readme_block(readme, name):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=folder, env=environment,
                              capture_output=True, text=True, timeout=timeout)
        result = CommandResult(command, proc.returncode, proc.stdout, proc.stderr)
        results.append(result)
        if expect_ok:
            assert proc.returncode == 0, (f"README command failed ({proc.returncode}): {command}\n"
                                          f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-4000:]
    return results
