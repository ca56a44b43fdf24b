"""Optional dependencies: which extra provides which module, and the install hint when one is missing.

A plain ``pip install corral`` runs every campaign that needs no extra; the modules below are imported
only on the path that needs them, and that path checks for them first (``corral check`` exits 2 with
the install command, before anything runs).
"""

from __future__ import annotations

import importlib.util
from enum import Enum


class Extra(str, Enum):
    LLM = "llm"
    POSTGRES = "postgres"
    PLOT = "plot"
    PARQUET = "parquet"
    PANDAS = "pandas"

    def __str__(self) -> str:
        return self.value

    @property
    def install(self) -> str:
        return f"pip install 'corral[{self.value}]'"


#: the import names each extra provides (pyproject.toml's optional-dependencies, by import name)
MODULES: dict[Extra, tuple[str, ...]] = {
    Extra.LLM: ("jinja2", "openai", "anthropic", "google.genai", "tiktoken", "PIL"),
    Extra.POSTGRES: ("psycopg",),
    Extra.PLOT: ("matplotlib",),
    Extra.PARQUET: ("pyarrow",),
    Extra.PANDAS: ("pandas",),
}

#: every optional module: none of them may be imported at module level on a path without its feature
OPTIONAL_MODULES: tuple[str, ...] = tuple(m for modules in MODULES.values() for m in modules)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: tuple[str, ...] | list[str]) -> list[str]:
    return [m for m in modules if not installed(m)]
