"""Every backend type, by the ``type:`` a ``backends:`` entry gives: its settings model and the class
that implements it.

This is the one table of backend types. spec/ never imports the backends themselves (they sit
below the engine), so the implementation is named as ``"module:Class"`` and imported on first use
by ``corral.backends.make_backend``. Each backend's settings live in their own module of this
package; a new type is its settings model (with ``type: Literal[...]``) and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import BaseModel, Field, TypeAdapter

from corral.spec.llm import AnthropicBatchSettings, GeminiBatchSettings, OpenAIBatchSettings
from corral.spec.models import LocalBackend
from corral.spec.slurm import SlurmBackend


@dataclass(frozen=True)
class BackendType:
    settings: type[BaseModel]
    #: "module:Class" of the backend, imported when a backend of this type is made
    implementation: str


BACKEND_TYPES: dict[str, BackendType] = {
    "local": BackendType(LocalBackend, "corral.backends.local:LocalBackendImpl"),
    "slurm": BackendType(SlurmBackend, "corral.backends.slurm:SlurmBackendImpl"),
    "openai_batch": BackendType(OpenAIBatchSettings, "corral.backends.openai_batch:OpenAIBatchBackend"),
    "anthropic_batch": BackendType(AnthropicBatchSettings, "corral.backends.anthropic_batch:AnthropicBatchBackend"),
    "gemini_batch": BackendType(GeminiBatchSettings, "corral.backends.gemini_batch:GeminiBatchBackend"),
}

#: the settings of any backend, told apart by ``type`` (its members are the table's, so the two
#: cannot disagree): Union[LocalBackend, SlurmBackend, OpenAIBatchSettings, AnthropicBatchSettings, ...]
BackendSettings = Annotated[Union[tuple(entry.settings for entry in BACKEND_TYPES.values())],  # type: ignore[misc]
                            Field(discriminator="type")]

BACKEND_SETTINGS: TypeAdapter[BaseModel] = TypeAdapter(BackendSettings)
