"""Splitting ``corral CMD [CAMPAIGN] [OVERRIDES...]`` into the campaign file and Hydra overrides."""

from __future__ import annotations

from pathlib import Path


def looks_like_override(arg: str) -> bool:
    return "=" in arg or arg.startswith("~")


def _names(path: str, test: str) -> bool:
    """``Path(path).is_dir()`` or ``is_file()``, False for a name the system refuses (too long, NUL)."""
    try:
        return getattr(Path(path), test)()
    except (OSError, ValueError):
        return False


def split_args(args: list[str] | None, *, positional: int = 0) -> tuple[str, list[str], list[str]]:
    """Return (campaign file, overrides, other positionals).

    The campaign file is the first argument when it names a file or folder (or ends in .yaml);
    otherwise ``./corral.yaml``. Arguments with ``=`` (or starting with ``~``) are overrides.
    """
    args = list(args or [])
    campaign = "corral.yaml"
    if args and not looks_like_override(args[0]):
        first = args[0]
        if first.endswith((".yaml", ".yml")) or _names(first, "is_dir") or (_names(first, "is_file") and positional == 0):
            campaign = args.pop(0)
    overrides = [a for a in args if looks_like_override(a)]
    others = [a for a in args if not looks_like_override(a)]
    return campaign, overrides, others
