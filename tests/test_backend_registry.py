"""One table of backend types (spec/backend_types.py): each type's settings model and class agree,
the settings union is told apart by ``type``, and corral's packages import one another without a
cycle (scripts/import-cycles, from the source's AST)."""

from __future__ import annotations

import importlib.util
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.backends import Backend, backend_class, make_backend
from corral.backends.base import SubmissionPlan
from corral.clock import VirtualClock
from corral.spec.backend_types import BACKEND_SETTINGS, BACKEND_TYPES

ROOT = Path(__file__).resolve().parents[1]


def test_every_type_has_settings_and_a_class_of_that_kind():
    for kind, entry in BACKEND_TYPES.items():
        cls = backend_class(kind)
        assert issubclass(cls, Backend) and cls.kind == kind
        assert entry.settings.model_fields["type"].default == kind
        settings = BACKEND_SETTINGS.validate_python({"type": kind})
        assert type(settings) is entry.settings


def test_the_union_is_discriminated_on_type():
    assert type(BACKEND_SETTINGS.validate_python({"type": "slurm", "partition": "gpu"})).__name__ == "SlurmBackend"
    with pytest.raises(ValidationError) as info:
        BACKEND_SETTINGS.validate_python({"type": "slurm", "partiton": "gpu"})
    # Only the slurm model was tried: one error, at the misspelt key.
    assert [e["loc"] for e in info.value.errors()] == [("slurm", "partiton")]


def test_a_backend_gets_the_engines_clock_at_construction():
    clock = VirtualClock(start=1000.0)
    said: list[str] = []
    backend = make_backend("local", BACKEND_SETTINGS.validate_python({"type": "local", "gpus": "none"}),
                           clock=clock, log=said.append)
    clock.advance(5)
    assert backend.now() == 1005.0
    backend.log("hello")
    assert said == ["hello"]


def test_plans_are_frozen():
    plan = SubmissionPlan(size=3)
    with pytest.raises(AttributeError):
        plan.size = 4  # type: ignore[misc]


def test_no_import_cycle_between_packages():
    loader = SourceFileLoader("import_cycles", str(ROOT / "scripts" / "import-cycles"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("import_cycles", loader))
    loader.exec_module(module)
    graph = module.edges()
    assert module.cycles(graph) == []
    assert "backends" not in graph["llm"] and "backends" not in graph["spec"]
