"""A run's identity: what defines its work (refused when changed, unless forced), what only steers it
(recorded, the run continues), and which items it has (new ones are added to the run)."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from corral.spec import identity, models
from corral.spec.backend_types import BACKEND_TYPES


def _models_in(annotation) -> tuple[list[type[BaseModel]], bool]:
    """The models an annotation holds, and whether they sit under a name or a position (dict, list)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    if origin in (dict, list, typing.Union) or str(origin) == "<class 'types.UnionType'>":
        found: list[type[BaseModel]] = []
        nested = False
        for arg in typing.get_args(annotation):
            inner, _ = _models_in(arg)
            found += inner
            nested = nested or (bool(inner) and origin in (dict, list))
        return found, nested
    return [], False


def _schema_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        inner, nested = _models_in(field.annotation)
        if not inner:
            keys.append(path)
        for sub in inner:
            keys += _schema_keys(sub, f"{path}.*." if nested else f"{path}.")
    return keys


def every_schema_key() -> list[str]:
    keys = [k for k in _schema_keys(models.Campaign, "") if k != "backends"]
    for entry in BACKEND_TYPES.values():
        keys += _schema_keys(entry.settings, "backends.*.")
    return sorted(set(keys))


def test_every_key_of_the_schema_is_classified_on_purpose():
    keys = every_schema_key()
    unclassified = [key for key in keys if identity.classified_as(key) != key]
    assert not unclassified, f"classify these keys in corral/spec/identity.py KEY_KINDS: {unclassified}"
    stale = sorted(set(identity.KEY_KINDS) - set(keys))
    assert not stale, f"KEY_KINDS names keys the schema does not have: {stale}"
    assert identity.kind_of("stages.label.request.messages") is identity.KeyKind.DEFINING
    assert identity.kind_of("backends.openai.budget.max_usd") is identity.KeyKind.STEERING
    assert identity.kind_of("items.grid.policy") is identity.KeyKind.MEMBERSHIP
