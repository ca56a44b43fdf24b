"""Run a Python entry point as if corral had been installed without any extra.

    python tests/support/without_extras.py [-m corral ...ARGS] | [-c CODE]

Every module that an extra of corral provides (corral.extras.OPTIONAL_MODULES) cannot be imported
(ModuleNotFoundError), as on a plain ``pip install corral``, and ``corral.extras.installed`` says
so. The dev install has them all, so this is how the test
suite sees what a newcomer's machine sees. ``CORRAL_TEST_ALLOW`` (comma-separated) lets some through.
"""

from __future__ import annotations

import os
import runpy
import sys
from importlib.abc import MetaPathFinder

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))
from corral.extras import OPTIONAL_MODULES  # noqa: E402

ALLOWED = {m for m in os.environ.get("CORRAL_TEST_ALLOW", "").split(",") if m}
BLOCKED = {m for m in OPTIONAL_MODULES if m not in ALLOWED}


def blocked(fullname: str) -> bool:
    """A blocked module or one inside it (``google.genai`` blocks ``google.genai.types``, not ``google``)."""
    return any(fullname == m or fullname.startswith(m + ".") for m in BLOCKED)


class NotInstalled(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if blocked(fullname):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


for name in list(sys.modules):
    if blocked(name):
        del sys.modules[name]
sys.meta_path.insert(0, NotInstalled())

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["-c"]:
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    elif args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        raise SystemExit("usage: without_extras.py -m MODULE [ARGS] | -c CODE")
