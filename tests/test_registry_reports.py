"""The registry and reports over several runs: shards merged into one run and counted once, merges
of different configurations refused, literal run-id prefixes, the default metric, grouping by a
parameter that is also a config value, short run labels, the best and worst N groups, and output
formats taken from the file's suffix. Each on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

BENCH = """
name: bench
params:
  policy: lingbot
items:
  grid:
    setting: [clean, noise]
    repeat: {range: [0, 5]}
stages:
  episode:
    call: m:episode
backends:
  local: {workers: 2, gpus: none}
"""

#: policy is an item parameter (one value per run) and a config value of the run
POLICIES = """
name: pol
params:
  policy: lingbot
items:
  grid:
    policy: [lingbot]
    setting: [clean, noise]
    repeat: {range: [0, 3]}
stages:
  episode:
    call: m:episode
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
def episode(item, ctx):
    good = {"clean": 4, "noise": 2}.get(item["setting"], 3) - (1 if item.get("policy") == "motus" else 0)
    return {"success": item["repeat"] < good, "steps": 10 + item["repeat"]}
"""


def report_json(folder, *args):
    return json.loads(corral_cli(folder, "report", *args, "-f", "json", check=0).stdout)


def run_ids(folder, *args):
    return [r["id"] for r in json.loads(corral_cli(folder, "runs", *args, "--json", check=0).stdout)]


@pytest.fixture(scope="module")
def shards(module_ledger, tmp_path_factory):
    """The benchmark run as two shards (as on two machines), then merged into ``bench_all``."""
    folder = tmp_path_factory.mktemp("bench")
    write_module(folder, "m", MODULE)
    write_campaign(folder, BENCH)
    corral_cli(folder, "run", "-q", "--shard", "0/2", check=0)
    corral_cli(folder, "run", "-q", "--shard", "1/2", check=0)
    first, second = reversed(run_ids(folder))
    corral_cli(folder, "runs", "merge", first, second, "--into", "bench_all", check=0)
    return folder, first, second


@pytest.fixture(scope="module")
def policies(module_ledger, tmp_path_factory):
    """Two runs of one benchmark, one per policy: ``policy`` is an item parameter and a config value."""
    folder = tmp_path_factory.mktemp("pol")
    write_module(folder, "m", MODULE)
    write_campaign(folder, POLICIES)
    corral_cli(folder, "run", "-q", check=0)
    corral_cli(folder, "run", "-q", "params.policy=motus", "items.grid.policy=[motus]", check=0)
    lingbot, motus = reversed(run_ids(folder))
    return folder, lingbot, motus


# -- merged runs and their sources --------------------------------------------------------------


def test_a_pooled_report_counts_merged_shards_once(shards):
    folder, first, second = shards
    pooled = report_json(folder, "--where", "name=bench", "--pool", "--by", "setting")
    assert pooled["total"]["expected"] == 10 and pooled["total"]["done"] == 10
    assert [g["expected"] for g in pooled["groups"]] == [5, 5]
    assert sorted(pooled["excluded_runs"], key=lambda r: r["id"]) == sorted(
        [{"id": first, "merged_into": "bench_all"}, {"id": second, "merged_into": "bench_all"}],
        key=lambda r: r["id"])
    assert [r["id"] for r in pooled["runs"]] == ["bench_all"]
    # Runs found by --where and compared: the merged run stands for its shards.
    compared = report_json(folder, "--where", "name=bench", "--by", "setting")
    assert [r["id"] for r in compared["runs"]] == ["bench_all"] and compared["total"]["expected"] == 10
    shown = corral_cli(folder, "report", "--where", "name=bench", "--pool", "-f", "md", check=0).stdout
    assert "merged into bench_all" in shown


def test_pool_of_named_runs_leaves_out_the_sources_of_a_merged_run(shards):
    folder, first, second = shards
    pooled = report_json(folder, "--run-id", first, "--run-id", second, "--run-id", "bench_all", "--pool",
                         "--by", "setting")
    assert pooled["total"]["expected"] == 10
    assert {r["id"] for r in pooled["excluded_runs"]} == {first, second}
    # The shards alone (no merged run among them) are pooled as they are: each item once.
    alone = report_json(folder, "--run-id", first, "--run-id", second, "--pool", "--by", "setting")
    assert alone["total"]["expected"] == 10 and alone["excluded_runs"] == []


# -- merging runs of different configurations ----------------------------------------------------------


def test_merging_runs_of_different_configurations_is_refused_unless_forced(policies):
    folder, lingbot, motus = policies
    refused = corral_cli(folder, "runs", "merge", lingbot, motus, "--into", "both", check=2)
    assert "different configurations" in refused.stderr and "--force" in refused.stderr
    assert "params.policy" in refused.stderr and "items.grid.policy" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "both" not in run_ids(folder)

    forced = json.loads(corral_cli(folder, "runs", "merge", lingbot, motus, "--into", "both", "--force",
                                   "--json", check=0).stdout)
    assert forced["created"] and forced["tasks_added"] == 12
    assert forced["config_differs"] == ["items.grid.policy", "params.policy"]
    shown = json.loads(corral_cli(folder, "runs", "show", "both", "--json", check=0).stdout)
    assert shown["selection"]["config_differs"] == ["items.grid.policy", "params.policy"]
    assert shown["selection"]["overrides"] == []  # one run's overrides are not the merged run's
    assert "policy" not in shown["config"].get("params", {})
    assert shown["config"]["items"]["grid"]["setting"] == ["clean", "noise"]


def test_merge_refuses_from_python_too(policies):
    import corral
    from corral.errors import ConfigsDiffer

    folder, lingbot, motus = policies
    campaign = corral.open(str(folder / "corral.yaml"))
    try:
        with pytest.raises(ConfigsDiffer) as refused:
            campaign.registry().merge([lingbot, motus], "both_py")
        assert [d["key"] for d in refused.value.differences] == ["items.grid.policy", "params.policy"]
        assert refused.value.differences[1]["values"] == {lingbot: "lingbot", motus: "motus"}
        assert all(r["id"] != "both_py" for r in campaign.runs())
    finally:
        campaign.close()


def test_shards_that_differ_only_in_steering_merge_without_force(tmp_path):
    # Two machines ran their shard with different worker counts and timeouts: the same work.
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, BENCH)
    corral_cli(tmp_path, "run", "-q", "--shard", "0/2", "backends.local.workers=1", check=0)
    corral_cli(tmp_path, "run", "-q", "--shard", "1/2", "+stages.episode.timeout=10m", check=0)
    first, second = reversed(run_ids(tmp_path))
    merged = json.loads(corral_cli(tmp_path, "runs", "merge", first, second, "--into", "steered", "--json",
                                   check=0).stdout)
    assert merged["created"] and merged["tasks_added"] == 10 and "config_differs" not in merged


# -- run ids ---------------------------------------------------------------------------------------------


def test_an_underscore_in_a_run_id_prefix_is_not_a_wildcard(tmp_path):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, BENCH.replace("name: bench", "name: ids\nrun_id: \"{model}-{timestamp}\"")
                   .replace("policy: lingbot", "policy: lingbot\n  model: gpt-4o-mini"))
    corral_cli(tmp_path, "run", "-q", "--limit", "2", check=0)
    (run_id,) = run_ids(tmp_path)
    assert run_id.startswith("gpt-4o-mini-")
    assert json.loads(corral_cli(tmp_path, "runs", "show", "gpt-4o-mini", "--json", check=0).stdout)["id"] == run_id
    for prefix in ("gpt-4o_mini", "gpt%mini", "GPT-4o-mini"):
        missing = corral_cli(tmp_path, "runs", "show", prefix, check=2)
        assert f"no run {prefix!r}" in missing.stderr
        assert f"no run {prefix!r}" in corral_cli(tmp_path, "report", "--run-id", prefix, check=2).stderr


# -- the default metric ----------------------------------------------------------------------------------


def test_the_default_metric_is_success_never_the_skipped_marker(tmp_path):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, BENCH.replace("name: bench", "name: skip").replace(
        "    call: m:episode", "    call: m:episode\n    skip_if: \"done/{setting}-{repeat}.flag\""))
    (tmp_path / "done").mkdir()
    for repeat in range(5):  # the first items in the ledger are skipped: their result is {"skipped": true}
        (tmp_path / "done" / f"clean-{repeat}.flag").write_text("")
    corral_cli(tmp_path, "run", "-q", check=0)
    table = report_json(tmp_path, "--by", "setting")
    assert table["metric"] == "success" and table["metric_chosen"] == "success"
    noise = next(g for g in table["groups"] if g["key"] == {"setting": "noise"})
    assert noise["success"]["n"] == 5 and noise["success"]["k"] == 2
    shown = corral_cli(tmp_path, "report", "--by", "setting", "-f", "md", check=0).stdout
    assert "metric: success" in shown and "skipped rate" not in shown
    # Without a success field, the task's own first boolean, never corral's marker.
    write_module(tmp_path, "m", MODULE.replace('"success"', '"solved"'))
    corral_cli(tmp_path, "run", "-q", "--new", check=0)
    other = report_json(tmp_path, "--by", "setting")
    assert other["metric"] == "solved" and other["metric_chosen"] == "first boolean field"


# -- grouping and labels ----------------------------------------------------------------------------------


def test_by_a_parameter_that_is_also_a_config_value_pools_the_runs(policies):
    folder, lingbot, motus = policies
    table = report_json(folder, "--run-id", lingbot, "--run-id", motus, "--by", "policy")
    assert table["compare_runs"] is False
    assert [(g["key"], g["expected"], g["done"]) for g in table["groups"]] == [
        ({"policy": "lingbot"}, 6, 6), ({"policy": "motus"}, 6, 6)]
    assert table["dimensions"][0]["kind"] == "param"
    shown = corral_cli(folder, "report", "--run-id", lingbot, "--run-id", motus, "--by", "policy", "-f", "md",
                       check=0).stdout
    assert "0/0" not in shown


def test_compared_shards_are_labelled_by_their_shard(shards, policies):
    folder, first, second = shards
    table = report_json(folder, "--run-id", first, "--run-id", second, "--by", "setting")
    assert table["compare_runs"] and [r["label"] for r in table["runs"]] == ["shard=0/2", "shard=1/2"]
    shown = corral_cli(folder, "report", "--run-id", first, "--run-id", second, "--by", "setting", "-f", "md",
                       check=0).stdout
    assert "shard=0/2: success rate" in shown and f"{first}:" not in shown
    # A value that two config keys hold (params.policy, items.grid.policy) is said once.
    folder, lingbot, motus = policies
    compared = report_json(folder, "--run-id", lingbot, "--run-id", motus, "--by", "setting", "--compare")
    assert [r["label"] for r in compared["runs"]] == ["policy=lingbot", "policy=motus"]


# -- best and worst groups -------------------------------------------------------------------------------


def test_top_lists_the_best_and_worst_n_groups(policies):
    folder, lingbot, motus = policies
    table = report_json(folder, "--run-id", lingbot, "--run-id", motus, "--by", "policy,setting", "--top", "2")
    top = table["top"]
    assert top["n"] == 2
    assert [(g["key"], g["value"]) for g in top["best"]] == [
        ({"policy": "lingbot", "setting": "clean"}, 1.0), ({"policy": "motus", "setting": "clean"}, 1.0)]
    assert [(g["key"], round(g["value"], 3)) for g in top["worst"]] == [
        ({"policy": "motus", "setting": "noise"}, 0.333), ({"policy": "lingbot", "setting": "noise"}, 0.667)]
    shown = corral_cli(folder, "report", "--run-id", lingbot, "--by", "setting", "--top", "1", "-f", "md",
                       check=0).stdout
    assert "best 1: setting=clean 1.000" in shown and "worst 1: setting=noise 0.667" in shown
    assert "best setting=clean" not in shown  # the single best/worst line would repeat it
    bad = corral_cli(folder, "report", "--by", "setting", "--top", "0", check=2)
    assert "--top" in bad.stderr and "Traceback" not in bad.stderr

    import corral

    campaign = corral.open(str(folder / "corral.yaml"))
    try:
        report = campaign.report(run_id=lingbot, by="setting", top=1)
        try:
            assert report.to_dict()["top"]["worst"][0]["key"] == {"setting": "noise"}
        finally:
            report.close()
    finally:
        campaign.close()


def test_top_in_the_report_section(policies):
    folder, lingbot, _ = policies
    # The same campaign with a report section (a second file, so the runs above stay its runs).
    write_campaign(folder, POLICIES + "report:\n  ranked: {by: setting, top: 1, formats: [json]}\n",
                   name="ranked.yaml")
    corral_cli(folder, "report", "ranked.yaml", "ranked", "--run-id", lingbot, check=0)
    written = json.loads((folder / "reports" / "ranked.json").read_text())
    assert written["top"]["n"] == 1 and written["top"]["best"][0]["key"] == {"setting": "clean"}
    write_campaign(folder, POLICIES + "report:\n  ranked: {by: setting, top: none}\n", name="bad.yaml")
    bad = corral_cli(folder, "report", "bad.yaml", "ranked", check=2)
    assert "bad.yaml" in bad.stderr and "top" in bad.stderr and "Traceback" not in bad.stderr


# -- output formats --------------------------------------------------------------------------------------


def test_the_output_suffix_names_the_format(shards):
    folder = shards[0]
    corral_cli(folder, "report", "--run-id", "bench_all", "--by", "setting", "-o", "table.tex", check=0)
    tex = (folder / "table.tex").read_text()
    assert tex.startswith("% corral report") and "\\begin{tabular}" in tex and "┃" not in tex
    corral_cli(folder, "report", "--run-id", "bench_all", "--by", "setting", "-o", "table.md", check=0)
    assert (folder / "table.md").read_text().startswith("**corral report")
    corral_cli(folder, "report", "--run-id", "bench_all", "--by", "setting", "-o", "table.json", check=0)
    assert json.loads((folder / "table.json").read_text())["total"]["expected"] == 10
    corral_cli(folder, "report", "--run-id", "bench_all", "--by", "setting", "-o", "table.csv", check=0)
    assert next(csv.reader(io.StringIO((folder / "table.csv").read_text())))[:2] == ["setting", "expected"]
    # An explicit --format wins over the suffix.
    corral_cli(folder, "report", "--run-id", "bench_all", "-f", "md", "-o", "named.tex", check=0)
    assert (folder / "named.tex").read_text().startswith("**corral report")

    corral_cli(folder, "runs", "-o", "runs.csv", check=0)
    assert next(csv.reader(io.StringIO((folder / "runs.csv").read_text())))[0] == "id"
    corral_cli(folder, "runs", "-o", "runs.json", check=0)
    assert {r["id"] for r in json.loads((folder / "runs.json").read_text())} >= {"bench_all"}
    corral_cli(folder, "status", "--run-id", "bench_all", "-o", "status.md", check=0)
    assert (folder / "status.md").read_text().lstrip().startswith(("**", "|"))
    corral_cli(folder, "export", "--run-id", "bench_all", "-o", "records.csv", check=0)
    header = next(csv.reader(io.StringIO((folder / "records.csv").read_text())))
    assert "setting" in header and "success" in header
    corral_cli(folder, "export", "--run-id", "bench_all", "-o", "records.json", check=0)
    assert len(json.loads((folder / "records.json").read_text())) == 10
