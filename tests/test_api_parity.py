"""Every command and its Python API call give the same answer on the same campaign, on SQLite and
PostgreSQL: what a command prints (as JSON) or writes is what the method returns or writes; a
command that changes the ledger leaves it as the method leaves a twin campaign's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import corral
from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: {name}
items:
  grid:
    x: {{range: [0, 6]}}
  key: "x{{x}}"
stages:
  work:
    call: m:work
  post:
    needs: work
    run: ["python", "-c", "print('post {{x}}')"]
backends:
  local: {{workers: 2, gpus: none}}
"""

MODULE = """
def work(item, ctx):
    ctx.log.info("working on %s", item["x"])
    if item["x"] == 3:
        raise ValueError("three is not allowed")
    return {"ok": item["x"] % 2 == 0, "score": item["x"] * 1.5}
"""


def make(folder: Path, name: str = "parity", run: bool = True) -> Path:
    write_module(folder, "m", MODULE)
    write_campaign(folder, CAMPAIGN.format(name=name))
    if run:
        with corral.open(str(folder / "corral.yaml")) as campaign:
            the_run, _ = campaign.start()
            the_run.run(max_interval=0.2)
    return folder


def cli_json(folder: Path, *args: str, check: int = 0):
    return json.loads(corral_cli(folder, *args, check=check).stdout)


def same(value):
    """As the command prints it: through JSON."""
    return json.loads(json.dumps(value, default=str))


def without_identity(status: dict) -> dict:
    """A status with what differs between twin campaigns (names, ids, times, hashes) left out."""
    data = same(status)
    data["run"] = {k: v for k, v in data["run"].items() if k in ("status", "items")}
    data["errors"] = [{k: v for k, v in e.items() if k != "task"} for e in data.get("errors", [])]
    return data


@pytest.fixture(scope="module")
def finished(tmp_path_factory, module_ledger) -> Path:
    """One finished run: x=3 failed, its post task cancelled upstream."""
    return make(tmp_path_factory.mktemp("parity"))


def api(folder: Path):
    return corral.open(str(folder / "corral.yaml"))


# -- reading verbs: one campaign, both ways -------------------------------------------------


def test_check(finished):
    with api(finished) as campaign:
        assert same(campaign.check()) == cli_json(finished, "check", "--json")
        assert same(campaign.check(limit=2, shard="0/2")) == \
            cli_json(finished, "check", "--json", "--limit", "2", "--shard", "0/2")
        assert same(campaign.check(preview=True)) == cli_json(finished, "run", "--dry-run")


def test_status(finished):
    with api(finished) as campaign:
        status = campaign.status()
        assert status["totals"]["failed"] == 1 and status["totals"]["cancelled"] == 1
        assert same(status) == cli_json(finished, "status", "--json")
        assert same(campaign.status(submissions=True)) == cli_json(finished, "status", "--json", "--submissions")


def test_export_files_are_byte_equal(finished, tmp_path):
    with api(finished) as campaign:
        for fmt in ("json", "jsonl", "csv", "parquet"):
            done = campaign.export(tmp_path / f"api.{fmt}", format=fmt, stage="work")
            assert done["records"] == 6
            corral_cli(finished, "export", "-f", fmt, "--stage", "work", "-o", str(tmp_path / f"cli.{fmt}"), check=0)
            assert (tmp_path / f"api.{fmt}").read_bytes() == (tmp_path / f"cli.{fmt}").read_bytes(), fmt
        text = io.StringIO()
        campaign.export(text, format="csv", state="done")
        # (the captured stdout reads CSV's \r\n as \n)
        assert text.getvalue().replace("\r\n", "\n") == \
            corral_cli(finished, "export", "-f", "csv", "--state", "done", check=0).stdout
        records = list(campaign.records(stage="work"))
        assert records == json.loads((tmp_path / "api.json").read_text())


def test_logs(finished):
    with api(finished) as campaign:
        found = campaign.logs("x3", stage="work")
        printed = corral_cli(finished, "logs", "x3", "--stage", "work", check=0).stdout
        task = found.task
        assert task["state"] == "failed" and task["error_class"] == "ValueError"
        assert printed.startswith(f"task t{task['id']} stage=work item=x3 state=failed attempts={task['attempts']}")
        assert f"error (ValueError): {task['error_message']}" in printed
        assert found.files and all(f"--- {path}" in printed for path in found.files)
        assert "working on 3" in found.texts()[-1] and found.texts()[-1] in printed
        every = campaign.logs(f"t{task['id']}", all_attempts=True)
        assert found.files[0] in every.files
        assert "".join(every.texts()) in corral_cli(finished, "logs", f"t{task['id']}", "--all", check=0).stdout


def test_report(finished, tmp_path):
    with api(finished) as campaign:
        report = campaign.report(by=["x"], metric="ok", stage="work")
        try:
            assert same(report.to_dict()) == cli_json(finished, "report", "--by", "x", "--metric", "ok",
                                                      "--stage", "work", "-f", "json")
            for fmt in ("md", "csv", "latex", "json"):
                printed = corral_cli(finished, "report", "--by", "x", "--metric", "ok", "--stage", "work", "-f", fmt,
                                     check=0).stdout
                assert report.render(fmt).replace("\r\n", "\n") == printed, fmt
            assert report.write(tmp_path / "api.md", format="md") == [tmp_path / "api.md"]
            corral_cli(finished, "report", "--by", "x", "--metric", "ok", "--stage", "work", "-o",
                       str(tmp_path / "cli.md"), "-f", "md", check=0)
            assert (tmp_path / "api.md").read_bytes() == (tmp_path / "cli.md").read_bytes()
        finally:
            report.close()
        with pytest.raises(corral.CorralError) as bad:
            campaign.report(format="pdf")
        assert str(bad.value) in corral_cli(finished, "report", "-f", "pdf", check=2).stderr


def test_runs_and_registry_reads(finished):
    with api(finished) as campaign:
        listed = campaign.runs()
        # The command adds the creation time as local time text, for reading.
        printed = cli_json(finished, "runs", "--json")
        assert [row.pop("created") for row in printed]
        assert same(listed) == printed
        printed = cli_json(finished, "runs", "--json", "--where", "status=finished_with_failures")
        assert same(campaign.runs(where=["status=finished_with_failures"])) == \
            [{k: v for k, v in row.items() if k != "created"} for row in printed]
        assert campaign.runs(where=["status=active"]) == []
        registry, run_id = campaign.registry(), listed[0]["id"]
        assert same(registry.show(run_id)) == cli_json(finished, "runs", "show", run_id, "--json")
        assert same(registry.latest()) == cli_json(finished, "runs", "latest", "--json")
        assert same(registry.diff(run_id, run_id)) == cli_json(finished, "runs", "diff", run_id, run_id, "--json")
        with pytest.raises(corral.CorralError) as bad:
            registry.latest(where=["status=active"])
        assert str(bad.value) in corral_cli(finished, "runs", "latest", "--where", "status=active", check=2).stderr


# -- verbs that change the ledger: twin campaigns, one each way -----------------------------------


def twins(tmp_path: Path, run: bool = True) -> tuple[Path, Path]:
    return make(tmp_path / "a", "twin_a", run), make(tmp_path / "b", "twin_b", run)


def test_tick(tmp_path):
    by_api, by_cli = twins(tmp_path, run=False)
    with api(by_api) as campaign:
        ticked = same(campaign.tick())
    printed = cli_json(by_cli, "tick", "--json")
    assert ticked["created"] and ticked["submitted"] >= 1
    assert {**ticked, "run_id": None} == {**printed, "run_id": None}


def test_run_with_tags_and_note(tmp_path):
    by_api, by_cli = twins(tmp_path, run=False)
    with api(by_api) as campaign:
        run, created = campaign.start(limit=4, tags=["owner=ana"], note="first try")
        run.run(max_interval=0.2)
        shown = campaign.registry().show(run.id)
    corral_cli(by_cli, "run", "-q", "--limit", "4", "--tag", "owner=ana", "--note", "first try", check=1)
    printed = cli_json(by_cli, "runs", "latest", "--json")
    assert created and shown["tags"] == printed["tags"] == {"owner": "ana"}
    assert [n["text"] for n in shown["notes"]] == [n["text"] for n in printed["notes"]] == ["first try"]
    assert shown["totals"] == printed["totals"] and shown["selection"] == printed["selection"]
    with pytest.raises(corral.CorralError) as bad:
        with api(by_api) as campaign:
            campaign.start(lease=0)
    assert str(bad.value) in corral_cli(by_cli, "run", "-q", "--lease", "0", check=2).stderr


def test_retry_and_cancel(tmp_path):
    by_api, by_cli = twins(tmp_path)
    with api(by_api) as campaign:
        retried = campaign.retry(error_class="ValueError")
    printed = cli_json(by_cli, "retry", "--error-class", "ValueError", "--json")
    assert retried["tasks"] == printed["tasks"] == 1
    with api(by_api) as campaign:
        assert campaign.retry(stage="post", cancelled=True)["tasks"] == \
            cli_json(by_cli, "retry", "--stage", "post", "--cancelled", "--json")["tasks"]
        cancelled = campaign.cancel(stage="work")
        assert cancelled["tasks"] == cli_json(by_cli, "cancel", "--stage", "work", "--json")["tasks"] >= 1
        assert campaign.cancel()["tasks"] == cli_json(by_cli, "cancel", "--json")["tasks"]
        assert without_identity(campaign.status()) == without_identity(cli_json(by_cli, "status", "--json"))
        with pytest.raises(corral.SpecError) as bad:
            campaign.retry(stage="nope")
    assert bad.value.key == "--stage" and bad.value.detail in corral_cli(by_cli, "retry", "--stage", "nope",
                                                                         check=2).stderr


def test_tag_note_merge_ingest(tmp_path):
    by_api, by_cli = twins(tmp_path)
    with api(by_api) as campaign:
        registry = campaign.registry()
        run_id = registry.latest()["id"]
        assert registry.tag(run_id, {"k": "v", "gone": "x"}, remove=["gone"]) == {"k": "v"}
        notes = registry.note(run_id, "looked at it")
        merged = same(registry.merge([run_id], "merged_api").as_dict())
    cli_id = cli_json(by_cli, "runs", "latest", "--json")["id"]
    corral_cli(by_cli, "runs", "tag", cli_id, "k=v", "gone=x", "--remove", "gone", check=0)
    corral_cli(by_cli, "runs", "note", cli_id, "looked", "at", "it", check=0)
    printed = cli_json(by_cli, "runs", "merge", cli_id, "--into", "merged_cli", "--json")
    shown = cli_json(by_cli, "runs", "show", cli_id, "--json")
    assert shown["tags"] == {"k": "v"} and [n["text"] for n in shown["notes"]] == [n["text"] for n in notes]
    assert merged["run"] == "merged_api" and printed["run"] == "merged_cli"
    assert {**merged, "run": None, "chosen_from": None} == {**printed, "run": None, "chosen_from": None}

    source = make(tmp_path / "elsewhere", "twin_a", run=False)
    ledger_file = str(source / "other" / "ledger.db")
    with corral.open(str(source / "corral.yaml"), ledger=ledger_file) as campaign:
        run, _ = campaign.start()
        run.run(max_interval=0.2)
    with api(by_api) as campaign:
        first = same([o.as_dict() for o in campaign.ingest([ledger_file])])
        assert first[0]["created"] and first[0]["tasks_added"] == 12
        again = same([o.as_dict() for o in campaign.ingest([ledger_file])])
    assert again == cli_json(by_api, "ingest", ledger_file, "--json")
