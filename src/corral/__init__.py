"""corral: run research campaigns with one durable ledger of what happened to every unit."""

__version__ = "0.1.0"

from corral.errors import CorralError, SpecError  # noqa: E402


def open(campaign: str = "corral.yaml", overrides: list[str] | None = None, **kwargs):  # noqa: A001
    """Open a campaign file: ``corral.open("corral.yaml").run().status()`` (``ledger=`` a URL or path)."""
    from corral.api import Campaign

    return Campaign.load(campaign, overrides or [], **kwargs)


def init(directory: str = ".", force: bool = False):
    """Write a starter corral.yaml and tasks.py into ``directory`` (``corral init``); returns their paths."""
    from corral.api.starter import init as write_starter

    return write_starter(directory, force=force)


__all__ = ["CorralError", "SpecError", "init", "open", "__version__"]
