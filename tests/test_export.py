"""Export as Parquet and as a pandas DataFrame; a clear error when the optional package is missing."""

from __future__ import annotations

import pytest

from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: ex
items:
  grid:
    setting: [a, b]
    repeat: {range: [0, 3]}
stages:
  episode:
    call: m:f
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
def f(item, ctx):
    if item["setting"] == "b" and item["repeat"] == 2:
        raise RuntimeError("boom")
    return {"success": item["repeat"] > 0, "score": item["repeat"] * 0.5, "extra": {"k": item["repeat"]}}
"""


@pytest.fixture(scope="module")
def finished(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    write_module(folder, "m", MODULE)
    write_campaign(folder, CAMPAIGN)
    corral_cli(folder, "run", "-q", check=1)  # one task fails
    return folder


def test_parquet(finished, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "r.parquet"
    corral_cli(finished, "export", "-f", "parquet", "-o", str(out), check=0)
    table = pq.read_table(out)
    assert table.num_rows == 6
    for column in ("run_id", "attempts", "started_at", "finished_at", "duration_s", "tokens_in", "tokens_out", "cost",
                   "setting", "repeat", "success", "score", "extra", "state", "error_class"):
        assert column in table.column_names, column
    rows = table.to_pylist()
    failed = [r for r in rows if r["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["error_class"] == "RuntimeError" and failed[0]["setting"] == "b"
    assert str(table.schema.field("tokens_in").type) == "int64"
    assert {r["extra"] for r in rows if r["state"] == "done"} == {'{"k": 0}', '{"k": 1}', '{"k": 2}'}
    assert "-o FILE.parquet" in corral_cli(finished, "export", "-f", "parquet", check=2).stderr


def test_parquet_missing_pyarrow(finished, tmp_path):
    # Stands for an installation without the extra: a module named pyarrow that cannot be imported.
    blocker = tmp_path / "block" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    proc = corral_cli(finished, "export", "-f", "parquet", "-o", str(tmp_path / "x.parquet"), check=2,
                      env={"PYTHONPATH": str(tmp_path / "block")})
    assert "pip install 'corral[parquet]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_dataframe(finished):
    pd = pytest.importorskip("pandas")
    import corral

    campaign = corral.open(str(finished / "corral.yaml"))
    try:
        frame = campaign.results()
        done = campaign.results(states=["done"])
    finally:
        campaign.close()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 6 and len(done) == 5
    assert frame["run_id"].nunique() == 1 and frame["attempts"].min() == 1
    assert list(frame.columns[:5]) == ["run_id", "stage", "item_key", "item_id", "task_id"]
    assert done.groupby("setting")["score"].mean().to_dict() == {"a": 0.5, "b": 0.25}
    assert frame["duration_s"].notna().all()
