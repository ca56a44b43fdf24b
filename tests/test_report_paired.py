"""corral report --paired-by: methods compared on the units they share (McNemar, paired t), with the
numbers recomputed here in plain Python from the tasks' own (deterministic) results."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

TASKS = """
import random

SKILL = {"base": 0.45, "tuned": 0.7}


def outcome(policy, task, seed):
    rng = random.Random(f"{task}/{seed}")
    difficulty = rng.random()
    own = random.Random(f"{policy}/{task}/{seed}").random()
    success = own * 0.6 + (1 - difficulty) * 0.4 < SKILL[policy]
    steps = 40 + int(difficulty * 100) + (0 if policy == "tuned" else rng.randint(0, 30))
    return {"success": success, "steps": steps}


def run_episode(item, ctx):
    if (item["policy"], item["task"], item["seed"]) == ("tuned", "stack", 11):
        raise RuntimeError("the simulator crashed")
    return outcome(item["policy"], item["task"], item["seed"])
"""

FAILED_UNIT = ("stack", 11)

CAMPAIGN = """
name: paired
items:
  grid:
    policy: [base, tuned]
    task: [pick, push, stack]
    seed: {range: [0, 12]}
  key: "{policy}/{task}/{seed}"
stages:
  episode:
    call: tasks:run_episode
backends:
  local:
    workers: 2
    gpus: none
report:
  comparisons:
    paired_by: policy
    pair_on: [task, seed]
    baseline: base
    formats: [csv, latex]
    caption: Paired comparisons.
    label: tab:comparisons
    output: "{name}.{ext}"
"""

T975 = {34: 2.032245}  # Student's t, 0.975 quantile, from a printed table


@pytest.fixture(scope="module")
def campaign(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("paired")
    write_module(folder, "tasks", TASKS)
    write_campaign(folder, CAMPAIGN)
    corral_cli(folder, "run", check=1, timeout=300)  # one task fails: its unit has no pair
    namespace: dict = {}
    exec(TASKS, namespace)
    units = [(task, seed) for task in ("pick", "push", "stack") for seed in range(12) if (task, seed) != FAILED_UNIT]
    truth = {unit: {p: namespace["outcome"](p, *unit) for p in ("base", "tuned")} for unit in units}
    return folder, truth


def binomial_p(b: int, c: int) -> float:
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


def test_paired_success_rates_get_mcnemars_exact_test(campaign):
    folder, truth = campaign
    data = json.loads(corral_cli(folder, "report", "--paired-by", "policy", "-f", "json", check=0).stdout)
    assert data["paired_by"] == "policy" and data["pair_on"] == ["task", "seed"] and data["baseline"] == "base"
    row = next(r for r in data["comparisons"] if r["metric"] == "success")
    b = sum(1 for u in truth.values() if u["base"]["success"] and not u["tuned"]["success"])
    c = sum(1 for u in truth.values() if u["tuned"]["success"] and not u["base"]["success"])
    n = len(truth)
    assert (row["other"], row["test"], row["n"], row["unpaired"]) == ("tuned", "mcnemar-exact", n, 1)
    assert row["diff"] == pytest.approx((c - b) / n)
    se = math.sqrt(b + c - (c - b) ** 2 / n) / n
    assert row["ci_low"] == pytest.approx((c - b) / n - 1.959964 * se, abs=1e-6)
    assert row["ci_high"] == pytest.approx((c - b) / n + 1.959964 * se, abs=1e-6)
    assert row["statistic"] == min(b, c)
    assert row["p_value"] == pytest.approx(binomial_p(b, c), rel=1e-9)


def test_paired_means_get_a_paired_t_test(campaign):
    folder, truth = campaign
    proc = corral_cli(folder, "report", "--paired-by", "policy", "--pair-on", "task,seed", "-f", "csv", check=0)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert list(rows[0]) == ["baseline", "other", "metric", "test", "n", "unpaired", "baseline_mean", "other_mean",
                             "diff", "ci_low", "ci_high", "statistic", "p_value"]
    row = next(r for r in rows if r["metric"] == "steps")
    diffs = [u["tuned"]["steps"] - u["base"]["steps"] for u in truth.values()]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    assert row["test"] == "paired-t" and int(row["n"]) == n and int(row["unpaired"]) == 1
    assert float(row["diff"]) == pytest.approx(mean, abs=1e-6)
    assert float(row["ci_low"]) == pytest.approx(mean - half, abs=1e-4)
    assert float(row["ci_high"]) == pytest.approx(mean + half, abs=1e-4)
    assert float(row["statistic"]) == pytest.approx(mean / (sd / math.sqrt(n)), abs=1e-4)
    # p < 0.05 exactly when |t| is beyond the table's 0.975 quantile
    assert (float(row["p_value"]) < 0.05) == (abs(float(row["statistic"])) > T975[n - 1])
    # A tiny p-value keeps its significant digits in the CSV (not rounded to 0.0).
    data = json.loads(corral_cli(folder, "report", "--paired-by", "policy", "-f", "json", check=0).stdout)
    exact = next(r for r in data["comparisons"] if r["metric"] == "steps")["p_value"]
    assert 0 < exact < 1e-6 and float(row["p_value"]) == pytest.approx(exact, rel=1e-5)


def test_paired_comparisons_write_markdown_and_latex(campaign):
    folder, _ = campaign
    corral_cli(folder, "report", "--paired-by", "policy", "--caption", "Tuned against base.",
               "--label", "tab:paired", "-o", "comparisons.tex", check=0)
    tex = (folder / "comparisons.tex").read_text()
    assert r"\begin{table}[t]" in tex and r"\caption{Tuned against base.}" in tex and r"\label{tab:paired}" in tex
    assert r"baseline & other & metric & test & n & unpaired" in tex and "mcnemar-exact" in tex
    md = corral_cli(folder, "report", "--paired-by", "policy", "-f", "md", check=0).stdout
    assert "| baseline | other | metric |" in md and "| base | tuned | steps | paired-t |" in md
    assert "paired-t" in corral_cli(folder, "report", "--paired-by", "policy", check=0).stdout


def test_a_named_report_writes_comparisons_csv_as_the_options_do(campaign):
    folder, _ = campaign
    corral_cli(folder, "report", "comparisons", check=0)
    asked = corral_cli(folder, "report", "--paired-by", "policy", "--baseline", "base", "-f", "csv", check=0).stdout
    assert (folder / "comparisons.csv").read_text() == asked
    assert r"\label{tab:comparisons}" in (folder / "comparisons.tex").read_text()


def test_the_python_api_takes_the_same_names(campaign):
    import corral

    folder, _ = campaign
    opened = corral.open(str(folder / "corral.yaml"))
    try:
        report = opened.report(paired_by="policy", pair_on=["task", "seed"], baseline="base")
        try:
            data = report.to_dict()
        finally:
            report.close()
    finally:
        opened.close()
    cli = json.loads(corral_cli(folder, "report", "--paired-by", "policy", "-f", "json", check=0).stdout)
    assert data == cli


def test_a_paired_dimension_that_does_not_exist_is_exit_2(campaign):
    folder, _ = campaign
    proc = corral_cli(folder, "report", "--paired-by", "polcy", check=2)
    assert "cannot group by 'polcy'" in proc.stderr and "policy" in proc.stderr and "Traceback" not in proc.stderr
    proc = corral_cli(folder, "report", "--paired-by", "policy", "--baseline", "nope", check=2)
    assert "--baseline 'nope' is not a value of policy; values: base, tuned" in proc.stderr
    proc = corral_cli(folder, "report", "--paired-by", "policy", "--pair-on", "task", check=2)
    assert "two done tasks share" in proc.stderr and "--pair-on" in proc.stderr


RUN_PER_POLICY = """
name: perpolicy
params:
  policy: base
items:
  grid:
    task: [pick, push, stack]
    seed: {range: [0, 12]}
  key: "{task}/{seed}"
stages:
  episode:
    call: tasks:run_episode
backends:
  local:
    workers: 2
    gpus: none
"""

CONFIG_TASKS = TASKS + """

def run_policy_episode(item, ctx):
    import json

    import corral

    campaign = corral.open(str(ctx.root / "corral.yaml"), ledger=ctx.ledger_url)
    try:
        policy = json.loads(campaign.run(ctx.run_id).row["config"])["params"]["policy"]
    finally:
        campaign.close()
    return outcome(policy, item["task"], item["seed"])
"""


def test_runs_one_per_policy_pair_up_on_their_shared_items(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("perpolicy")
    write_module(folder, "tasks", CONFIG_TASKS)
    write_campaign(folder, RUN_PER_POLICY.replace("tasks:run_episode", "tasks:run_policy_episode"))
    for policy in ("base", "tuned"):
        corral_cli(folder, "run", f"params.policy={policy}", check=0, timeout=300)
    namespace: dict = {}
    exec(TASKS, namespace)
    outcome = namespace["outcome"]
    units = [(task, seed) for task in ("pick", "push", "stack") for seed in range(12)]
    data = json.loads(corral_cli(folder, "report", "--where", "status=done", "--paired-by", "policy", "-f", "json",
                                 check=0).stdout)
    assert data["pair_on"] == ["task", "seed"] and len(data["runs"]) == 2
    row = next(r for r in data["comparisons"] if r["metric"] == "steps")
    diffs = [outcome("tuned", *u)["steps"] - outcome("base", *u)["steps"] for u in units]
    assert row["n"] == len(units) and row["diff"] == pytest.approx(sum(diffs) / len(diffs))
    pivot = list(csv.DictReader(io.StringIO(corral_cli(
        folder, "report", "--where", "status=done", "--by", "task", "--columns", "policy", "-f", "csv",
        check=0).stdout)))
    for line in pivot:
        for policy in ("base", "tuned"):
            wins = sum(outcome(policy, line["task"], s)["success"] for s in range(12))
            assert float(line[f"{policy}_success_rate"]) == pytest.approx(wins / 12)


def test_wilcoxons_signed_rank_test_for_paired_means(campaign):
    folder, truth = campaign
    data = json.loads(corral_cli(folder, "report", "--paired-by", "policy", "--paired-test", "wilcoxon", "-f", "json",
                                 check=0).stdout)
    row = next(r for r in data["comparisons"] if r["metric"] == "steps")
    diffs = [u["tuned"]["steps"] - u["base"]["steps"] for u in truth.values()]
    nonzero = [d for d in diffs if d != 0]
    sizes = sorted(abs(d) for d in nonzero)
    rank = {size: sum(i + 1 for i, s in enumerate(sizes) if s == size) / sizes.count(size) for size in set(sizes)}
    w_plus = sum(rank[abs(d)] for d in nonzero if d > 0)
    m = len(nonzero)
    ties = sum(sizes.count(s) ** 3 - sizes.count(s) for s in set(sizes))
    sd = math.sqrt(m * (m + 1) * (2 * m + 1) / 24 - ties / 48)
    z = (abs(w_plus - m * (m + 1) / 4) - 0.5) / sd
    walsh = sorted((a + b) / 2 for i, a in enumerate(diffs) for b in diffs[i:])
    assert row["test"] == "wilcoxon" and row["n"] == len(diffs)
    assert row["statistic"] == pytest.approx(w_plus)
    assert row["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert row["diff"] == pytest.approx(walsh[len(walsh) // 2] if len(walsh) % 2 else
                                        (walsh[len(walsh) // 2 - 1] + walsh[len(walsh) // 2]) / 2)
    assert row["ci_low"] in walsh and row["ci_high"] in walsh and row["ci_low"] <= row["diff"] <= row["ci_high"]
    success = next(r for r in data["comparisons"] if r["metric"] == "success")
    assert success["test"] == "mcnemar-exact"
    proc = corral_cli(folder, "report", "--paired-by", "policy", "--paired-test", "sign", check=2)
    assert "--paired-test 'sign' is not one of t, wilcoxon" in proc.stderr


def test_wilcoxon_exact_p_value_and_interval_match_a_published_example():
    # Hollander & Wolfe (1973), p. 29: depression scores before (x) and after (y); no ties, n = 9.
    from corral.report.paired_stats import wilcoxon

    x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    result = wilcoxon(y, x)  # x - y
    assert result["statistic"] == 40.0
    assert result["p_value"] == pytest.approx(20 / 512)  # 2 * P(W+ <= 5), 10 of 512 sign patterns
    assert result["diff"] == pytest.approx(0.46)
    d = [p - q for p, q in zip(x, y)]
    walsh = sorted((a + b) / 2 for i, a in enumerate(d) for b in d[i:])
    # the interval: the 6th smallest and 6th largest of the 45 Walsh averages (P(W+ <= 5) = 10/512 <= 0.025)
    assert (result["ci_low"], result["ci_high"]) == (pytest.approx(walsh[5]), pytest.approx(walsh[39]))
