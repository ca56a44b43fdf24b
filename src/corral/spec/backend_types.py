"""The settings model of every backend type, by the ``type:`` a ``backends:`` entry gives.

Each backend's settings live in their own module of this package; register them here.
"""

from __future__ import annotations

from pydantic import BaseModel

from corral.spec.llm import AnthropicBatchSettings, OpenAIBatchSettings
from corral.spec.models import LocalBackend
from corral.spec.slurm import SlurmBackend

BACKEND_TYPES: dict[str, type[BaseModel]] = {
    "local": LocalBackend,
    "openai_batch": OpenAIBatchSettings,
    "anthropic_batch": AnthropicBatchSettings,
    "slurm": SlurmBackend,
}
