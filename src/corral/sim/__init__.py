"""A local Batch API (OpenAI Files + Batches, Anthropic Message Batches) with virtual time, the
providers' limits and injected faults: for tests, benchmarks and rehearsing a campaign."""

from corral.sim.clock import ManualClock, RealClock
from corral.sim.model import FAULTS, TURNAROUND_MODELS, Phase, SimConfig, Turnaround
from corral.sim.server import SimServer
from corral.sim.tokens import anthropic_request_tokens, openai_request_tokens

__all__ = ["FAULTS", "TURNAROUND_MODELS", "ManualClock", "Phase", "RealClock", "SimConfig", "SimServer", "Turnaround",
           "anthropic_request_tokens", "openai_request_tokens"]
