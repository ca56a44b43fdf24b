"""The simulator's named turnaround models: ``default`` and ``heavy`` (in progress lognormal with
sigma 1.5), chosen in SimConfig or its YAML, drawn batch by batch as the simulator draws them."""

from __future__ import annotations

import math
import statistics

import pytest

from corral.errors import SpecError
from corral.sim import TURNAROUND_MODELS, SimConfig, Turnaround
from corral.sim.core import Batch


def in_progress_draws(config: SimConfig, count: int) -> list[float]:
    """In-progress durations of ``count`` empty batches (no per-request time), as the simulator draws them."""
    return [Batch("openai", f"b{seq}", seq, "m", [], 0.0, config).ip_duration for seq in range(count)]


@pytest.mark.parametrize(("model", "sigma"), [("default", 1.0), ("heavy", 1.5)])
def test_in_progress_durations_have_the_model_median_and_sigma(model, sigma):
    draws = in_progress_draws(SimConfig(seed=11, turnaround=model), 20_000)
    logs = [math.log(d) for d in draws]
    assert math.exp(statistics.median(logs)) == pytest.approx(1200.0, rel=0.05)
    assert statistics.stdev(logs) == pytest.approx(sigma, rel=0.03)


def test_heavy_keeps_the_other_phases_and_has_a_longer_tail():
    heavy, default = Turnaround.named("heavy"), Turnaround()
    assert (heavy.validating, heavy.finalizing, heavy.cancelling) == \
        (default.validating, default.finalizing, default.cancelling)
    assert heavy.in_progress.sigma == 1.5 and heavy.in_progress.median_s == default.in_progress.median_s
    # mean 1200 x e^(1.5^2/2) = 61.6 min in progress plus 0.1 s per request
    assert heavy.in_progress.mean(300) == pytest.approx(1200 * math.exp(1.125) + 30)
    draws = sorted(in_progress_draws(SimConfig(seed=4, turnaround="heavy"), 10_000))
    assert draws[9_000] / 3600 == pytest.approx(2.28, rel=0.1)       # one in ten over about 2.3 h


def test_the_model_is_chosen_by_name_or_under_phase_overrides(tmp_path):
    assert SimConfig().turnaround == Turnaround.named("default")
    (tmp_path / "sim.yaml").write_text("turnaround: heavy\n")
    assert SimConfig.from_yaml(tmp_path / "sim.yaml").turnaround.in_progress.sigma == 1.5
    (tmp_path / "sim.yaml").write_text("turnaround:\n  model: heavy\n  validating: {median_s: 5}\n")
    config = SimConfig.from_yaml(tmp_path / "sim.yaml")
    assert config.turnaround.in_progress.sigma == 1.5 and config.turnaround.validating.median_s == 5
    assert set(TURNAROUND_MODELS) == {"default", "heavy"}


def test_an_unknown_model_is_refused_naming_the_valid_ones(tmp_path):
    (tmp_path / "sim.yaml").write_text("turnaround: heavier\n")
    with pytest.raises(SpecError) as caught:
        SimConfig.from_yaml(tmp_path / "sim.yaml")
    text = str(caught.value)
    assert "turnaround.model" in text and "default, heavy" in text and "sim.yaml" in text
