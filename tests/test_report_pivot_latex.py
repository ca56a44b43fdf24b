"""corral report --columns DIM (pivot tables) and LaTeX with a caption, a label and the best values in
bold, on a campaign whose results are fixed by construction (golden LaTeX text)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import corral_cli, write_campaign, write_module

from corral.report import wilson

pytestmark = pytest.mark.usefixtures("campaign_ledger")

TASKS = """
WINS = {("a", "clean"): 2, ("a", "noisy"): 1, ("b", "clean"): 3, ("b", "noisy"): 1}


def run_episode(item, ctx):
    policy, setting, seed = item["policy"], item["setting"], item["seed"]
    steps = (100 if policy == "a" else 80) + 10 * seed + (20 if setting == "noisy" else 0)
    return {"success": seed < WINS[(policy, setting)], "steps": steps}
"""

CAMPAIGN = """
name: pivot
items:
  grid:
    setting: [clean, noisy]
    policy: [a, b]
    seed: {range: [0, 4]}
  key: "{setting}/{policy}/{seed}"
stages:
  episode:
    call: tasks:run_episode
backends:
  local:
    workers: 2
    gpus: none
report:
  main:
    by: setting
    columns: policy
    caption: Success rate.
    label: tab:main
    formats: [latex]
    output: "{name}.{ext}"
"""

WINS = {("a", "clean"): 2, ("a", "noisy"): 1, ("b", "clean"): 3, ("b", "noisy"): 1}

PIVOT_TEX = r"""% corral report: RUN (stage episode, by setting, policy)
\begin{table}[t]
\centering
\caption{Success rate.}
\label{tab:main}
\begin{tabular}{lrrrr}
\toprule
setting (success rate) & a & a 95\% CI & b & b 95\% CI \\
\midrule
clean & 0.500 & [0.150, 0.850] & \textbf{0.750} & [0.301, 0.954] \\
noisy & \textbf{0.250} & [0.046, 0.699] & \textbf{0.250} & [0.046, 0.699] \\
\midrule
(all) & 0.375 & [0.137, 0.694] & 0.500 & [0.215, 0.785] \\
\bottomrule
\end{tabular}
\end{table}
"""

GROUPED_TEX = r"""% corral report: RUN (stage episode, by setting, policy)
\begin{tabular}{llrrrrrrrrrrl}
\toprule
setting & policy & expected & done & failed & running & progress & success rate & 95\% CI & steps mean & steps std & steps $\pm$95\% & errors \\
\midrule
clean & a & 4 & 4 & 0 & 0 & 100.0\% & 0.500 & [0.150, 0.850] & 115.000 & 12.910 & 12.652 & - \\
clean & b & 4 & 4 & 0 & 0 & 100.0\% & \textbf{0.750} & [0.301, 0.954] & \textbf{95.000} & 12.910 & 12.652 & - \\
noisy & a & 4 & 4 & 0 & 0 & 100.0\% & 0.250 & [0.046, 0.699] & 135.000 & 12.910 & 12.652 & - \\
noisy & b & 4 & 4 & 0 & 0 & 100.0\% & 0.250 & [0.046, 0.699] & 115.000 & 12.910 & 12.652 & - \\
\midrule
(all) &  & 16 & 16 & 0 & 0 & 100.0\% & 0.438 & [0.231, 0.668] & 115.000 & 18.619 & 9.123 & - \\
\bottomrule
\end{tabular}
"""


@pytest.fixture(scope="module")
def campaign(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pivot")
    write_module(folder, "tasks", TASKS)
    write_campaign(folder, CAMPAIGN)
    corral_cli(folder, "run", check=0, timeout=300)
    run_id = json.loads(corral_cli(folder, "report", "--by", "setting", "-f", "json", check=0).stdout)["runs"][0]["id"]
    return folder, run_id.replace("_", r"\_")


def test_a_pivot_latex_table_has_its_caption_label_and_the_best_per_row_in_bold(campaign):
    folder, run = campaign
    tex = corral_cli(folder, "report", "--by", "setting", "--columns", "policy", "--caption", "Success rate.",
                     "--label", "tab:main", "-f", "latex", check=0).stdout
    assert tex == PIVOT_TEX.replace("RUN", run)


def test_a_named_report_writes_the_same_pivot_latex(campaign):
    folder, run = campaign
    corral_cli(folder, "report", "main", check=0)
    assert (folder / "main.tex").read_text() == PIVOT_TEX.replace("RUN", run)


def test_the_best_mean_is_the_lowest_for_a_lower_is_better_field(campaign):
    folder, run = campaign
    tex = corral_cli(folder, "report", "--by", "setting,policy", "--lower-is-better", "steps", "-f", "latex",
                     check=0).stdout
    assert tex == GROUPED_TEX.replace("RUN", run)
    higher = corral_cli(folder, "report", "--by", "setting,policy", "-f", "latex", check=0).stdout
    assert r"\textbf{135.000}" in higher and r"\begin{table}" not in higher


def test_a_pivot_csv_has_one_row_per_setting_and_the_policies_as_columns(campaign):
    folder, _ = campaign
    text = corral_cli(folder, "report", "--by", "setting", "--columns", "policy", "-f", "csv", check=0).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["setting"] for r in rows] == ["clean", "noisy"]
    for row in rows:
        for policy in ("a", "b"):
            k = WINS[(policy, row["setting"])]
            lo, hi = wilson(k, 4)
            assert int(row[f"{policy}_success_n"]) == 4
            assert float(row[f"{policy}_success_rate"]) == pytest.approx(k / 4)
            assert float(row[f"{policy}_success_lo"]) == pytest.approx(lo, abs=1e-6)
            assert float(row[f"{policy}_success_hi"]) == pytest.approx(hi, abs=1e-6)


def test_a_pivot_of_a_numeric_metric_in_json_md_and_html(campaign):
    folder, _ = campaign
    args = ("report", "--by", "setting", "--columns", "policy", "--metric", "steps")
    data = json.loads(corral_cli(folder, *args, "-f", "json", check=0).stdout)
    assert data["columns"] == "policy" and data["pivot"]["values"] == ["a", "b"]
    means = {(r["key"].get("setting"), v): c["numeric"]["steps"]["mean"]
             for r in data["pivot"]["rows"] for v, c in r["cells"].items()}
    for setting in ("clean", "noisy"):
        for policy in ("a", "b"):
            steps = [(100 if policy == "a" else 80) + 10 * s + (20 if setting == "noisy" else 0) for s in range(4)]
            assert means[(setting, policy)] == pytest.approx(sum(steps) / 4)
    md = corral_cli(folder, *args, "-f", "md", check=0).stdout
    assert "| setting (steps mean) | a | a 95% CI | b | b 95% CI |" in md and "| clean | 115.000 |" in md
    html = corral_cli(folder, *args, "-f", "html", check=0).stdout
    assert "<th>setting (steps mean)</th><th>a</th>" in html


def test_columns_with_runs_as_columns_is_exit_2(campaign):
    folder, _ = campaign
    proc = corral_cli(folder, "report", "--by", "setting", "--columns", "policy", "--compare", check=2)
    assert "--columns policy" in proc.stderr and "Traceback" not in proc.stderr
    proc = corral_cli(folder, "report", "--by", "setting", "--lower-is-better", "stepz", check=2)
    assert "--lower-is-better stepz: not a result field" in proc.stderr and "steps" in proc.stderr


PER_RUN_TASKS = TASKS + """

def run_policy_episode(item, ctx):
    import json

    import corral

    campaign = corral.open(str(ctx.root / "corral.yaml"), ledger=ctx.ledger_url)
    try:
        policy = json.loads(campaign.run(ctx.run_id).row["config"])["params"]["policy"]
    finally:
        campaign.close()
    return run_episode({**item, "policy": policy}, ctx)
"""

PER_RUN = """
name: perrun
params:
  policy: a
items:
  grid:
    setting: [clean, noisy]
    seed: {range: [0, 4]}
  key: "{setting}/{seed}"
stages:
  episode:
    call: tasks:run_policy_episode
backends:
  local:
    workers: 2
    gpus: none
"""


def test_runs_as_columns_bold_the_best_run_per_row(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("perrun")
    write_module(folder, "tasks", PER_RUN_TASKS)
    write_campaign(folder, PER_RUN)
    ids = []
    for policy in ("a", "b"):
        corral_cli(folder, "run", f"params.policy={policy}", check=0, timeout=300)
        ids.append(json.loads(corral_cli(folder, "report", "-f", "json", check=0).stdout)["runs"][0]["id"])
    tex = corral_cli(folder, "report", "--run-id", ids[0], "--run-id", ids[1], "--by", "setting", "-f", "latex",
                     check=0).stdout
    lines = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    assert lines["clean"].startswith(r"clean & 0.500 & [0.150, 0.850] & 4/4 & \textbf{0.750} & ")
    assert lines["noisy"].startswith(r"noisy & \textbf{0.250} & [0.046, 0.699] & 4/4 & \textbf{0.250} & ")
    assert r"\textbf" not in lines["(all)"]
