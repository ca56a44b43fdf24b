"""Item sources and the stable identity of an item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import campaign_dict, write_campaign
from corral.engine.runs import Selection
from corral.errors import SpecError
from corral.spec import ItemSource, item_identity, load_campaign

STAGES = {"a": {"call": "tasks:f"}}


def source(tmp_path: Path, items: dict) -> ItemSource:
    path = write_campaign(tmp_path, campaign_dict(STAGES, items=items))
    loaded = load_campaign(path)
    return ItemSource(loaded.spec.items, loaded.root, loaded.path)


def params(tmp_path: Path, items: dict, **kwargs) -> list[dict]:
    return [item.params for item in source(tmp_path, items).items(**kwargs)]


# -- identity ---------------------------------------------------------------------------------------


def test_identity_is_pinned():
    # A change of the hashing (canonical form, hash function, length) changes every item's identity
    # and so breaks resuming and merging old runs: it must be deliberate.
    assert item_identity({"policy": "random", "setting": "clean", "task": "pick", "repeat": 0}) == "c21ed0d5a2c31d54"
    assert item_identity({"a": 1}) == "015abd7f5cc57a2d"
    assert item_identity({"a": [1, 2], "b": {"c": 3}}) == "741f715b677c2be2"


def test_integral_float_hashes_like_int():
    assert item_identity({"a": 1}) == item_identity({"a": 1.0})
    assert item_identity({"a": [1, 2.0], "b": {"c": 3.0}}) == item_identity({"a": [1, 2], "b": {"c": 3}})
    assert item_identity({"a": 1.5}) != item_identity({"a": 1})
    assert item_identity({"a": True}) != item_identity({"a": 1})
    assert item_identity({"a": "1"}) != item_identity({"a": 1})


def test_key_order_does_not_matter():
    assert item_identity({"a": 1, "b": "x", "c": {"d": 1, "e": 2}}) == \
        item_identity({"c": {"e": 2, "d": 1}, "b": "x", "a": 1})


def test_identity_does_not_depend_on_the_source(tmp_path: Path):
    (tmp_path / "items.csv").write_text("model,seed\nsmall,1\nlarge,2\n")
    (tmp_path / "items.jsonl").write_text('{"seed": 1.0, "model": "small"}\n{"model": "large", "seed": 2}\n')
    from_csv = source(tmp_path / "csv", {"from": str(tmp_path / "items.csv")})
    from_jsonl = source(tmp_path / "jsonl", {"from": str(tmp_path / "items.jsonl")})
    from_list = source(tmp_path / "list", {"list": [{"model": "small", "seed": 1}, {"model": "large", "seed": 2}]})
    from_zip = source(tmp_path / "zip", {"zip": {"model": ["small", "large"], "seed": [1, 2]}})
    ids = [[item.item_id for item in s.items()] for s in (from_csv, from_jsonl, from_list, from_zip)]
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert ids[0] == [item_identity({"model": "small", "seed": 1}), item_identity({"model": "large", "seed": 2})]


def test_identity_and_order_are_stable_across_loads(tmp_path: Path):
    items = {"grid": {"b": [3, 1, 2], "a": ["x", "y"]}}
    first = [(i.index, i.item_id) for i in source(tmp_path, items).items()]
    second = [(i.index, i.item_id) for i in source(tmp_path, items).items()]
    assert first == second
    assert [i for i, _ in first] == list(range(6))


# -- sources -----------------------------------------------------------------------------------------


def test_range_axis(tmp_path: Path):
    assert params(tmp_path, {"grid": {"x": {"range": [0, 10, 2]}}}) == [{"x": v} for v in (0, 2, 4, 6, 8)]
    assert params(tmp_path, {"grid": {"x": {"range": 3}}}) == [{"x": 0}, {"x": 1}, {"x": 2}]
    assert params(tmp_path, {"grid": {"x": {"range": [5, 7]}}}) == [{"x": 5}, {"x": 6}]


def test_grid_is_a_product_in_declared_order(tmp_path: Path):
    got = params(tmp_path, {"grid": {"a": [1, 2], "b": ["x", "y", "z"]}})
    assert got == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]


def test_grid_times_from_file(tmp_path: Path):
    (tmp_path / "tasks.jsonl").write_text('{"task": "pick", "length": 3}\n{"task": "push", "length": 5}\n')
    got = params(tmp_path, {"from": "tasks.jsonl", "grid": {"seed": [0, 1, 2]}})
    assert len(got) == 6
    assert got[0] == {"task": "pick", "length": 3, "seed": 0}
    assert {(p["task"], p["seed"]) for p in got} == {(t, s) for t in ("pick", "push") for s in (0, 1, 2)}
    assert source(tmp_path, {"from": "tasks.jsonl", "grid": {"seed": [0, 1, 2]}}).count() == 6


def test_zip_pairs_values(tmp_path: Path):
    got = params(tmp_path, {"zip": {"a": [1, 2, 3], "b": ["x", "y", "z"]}})
    assert got == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}]


def test_zip_length_mismatch_is_an_error(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        params(tmp_path, {"zip": {"a": [1, 2, 3], "b": ["x", "y"]}})
    assert info.value.key == "items.zip"
    assert "same length" in str(info.value)
    assert str(tmp_path / "corral.yaml") in str(info.value)


def test_csv_numbers_are_parsed(tmp_path: Path):
    (tmp_path / "items.csv").write_text("name,count,ratio,big,label,empty\n"
                                        "a,3,0.5,1e3,007x,\n"
                                        "b,-4,2.0,inf,nan!,\n")
    got = params(tmp_path, {"from": "items.csv"})
    assert got[0] == {"name": "a", "count": 3, "ratio": 0.5, "big": 1000.0, "label": "007x", "empty": ""}
    assert isinstance(got[0]["count"], int) and isinstance(got[0]["ratio"], float)
    assert got[1]["count"] == -4 and got[1]["ratio"] == 2.0
    assert got[1]["big"] == "inf"  # non-finite numbers stay text
    assert got[1]["label"] == "nan!"


def test_json_file_with_items_key(tmp_path: Path):
    (tmp_path / "items.json").write_text(json.dumps({"items": [{"a": 1}, {"a": 2}]}))
    assert params(tmp_path, {"from": "items.json"}) == [{"a": 1}, {"a": 2}]


def test_where_filters_file_rows(tmp_path: Path):
    (tmp_path / "items.csv").write_text("split,length\ntrain,10\ntest,200\ntest,900\ntrain,50\n")
    got = params(tmp_path, {"from": {"path": "items.csv", "where": "split == 'test' and length < 500"}})
    assert got == [{"split": "test", "length": 200}]


def test_where_syntax_error(tmp_path: Path):
    (tmp_path / "items.csv").write_text("a\n1\n")
    with pytest.raises(SpecError) as info:
        params(tmp_path, {"from": {"path": "items.csv", "where": "a >"}})
    assert info.value.key == "items.from.where"


def test_where_cannot_reach_builtins(tmp_path: Path):
    (tmp_path / "items.csv").write_text("a\n1\n")
    with pytest.raises(SpecError) as info:
        params(tmp_path, {"from": {"path": "items.csv", "where": "__import__('os') is None"}})
    assert "NameError" in str(info.value)


def test_key_template(tmp_path: Path):
    items = source(tmp_path, {"grid": {"m": ["s", "l"], "seed": [0, 1]}, "key": "{m}-s{seed}"}).items()
    assert [i.key for i in items] == ["s-s0", "s-s1", "l-s0", "l-s1"]


def test_parameter_from_two_sources_is_an_error(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        params(tmp_path, {"list": [{"a": 1}], "grid": {"a": [1, 2]}})
    assert "two item sources" in str(info.value)


def test_duplicate_items_are_an_error(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        params(tmp_path, {"list": [{"a": 1}, {"a": 2}, {"a": 1.0}]})
    assert "items 0 and 2" in str(info.value)


# -- selection: shards and limits ---------------------------------------------------------------------


def test_shards_partition_the_items_exactly(tmp_path: Path):
    items = {"grid": {"x": {"range": [0, 40]}, "y": ["a", "b"]}}
    every = [i.item_id for i in source(tmp_path, items).items()]
    shards = [[i.item_id for i in source(tmp_path, items).items(shard=(k, 4))] for k in range(4)]
    assert sum(len(s) for s in shards) == len(every) == 80
    assert sorted(x for s in shards for x in s) == sorted(every)
    assert all(shards), "with 80 items every shard of 4 gets some"
    # each shard keeps the campaign's order and renumbers its items from 0
    for k in range(4):
        picked = list(source(tmp_path, items).items(shard=(k, 4)))
        assert [i.index for i in picked] == list(range(len(picked)))
        assert [i.item_id for i in picked] == [x for x in every if x in set(shards[k])]
        # the same item lands in the same shard whatever else is in the campaign
        assert all(int(i.item_id, 16) % 4 == k for i in picked)


def test_shard_membership_does_not_depend_on_other_items(tmp_path: Path):
    small = {(i.params["x"], i.item_id) for i in source(tmp_path / "s", {"grid": {"x": [1, 2, 3]}}).items(shard=(1, 3))}
    big = {(i.params["x"], i.item_id)
           for i in source(tmp_path / "b", {"grid": {"x": list(range(1, 30))}}).items(shard=(1, 3))}
    assert small <= big


def test_limit_takes_the_first_items(tmp_path: Path):
    items = {"grid": {"x": {"range": [0, 10]}}}
    assert [i.params["x"] for i in source(tmp_path, items).items(limit=3)] == [0, 1, 2]
    sharded = [i.item_id for i in source(tmp_path, items).items(shard=(1, 2))]
    assert [i.item_id for i in source(tmp_path, items).items(shard=(1, 2), limit=2)] == sharded[:2]


def test_check_reports_the_selection(tmp_path: Path):
    import corral

    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f"}, "b": {"call": "tasks:f", "per": "all",
                                                                           "needs": "a"}},
                                           items={"grid": {"x": {"range": [0, 10]}}}))
    (tmp_path / "tasks.py").write_text("def f(item, ctx):\n    return {}\n")
    campaign = corral.open(str(tmp_path / "corral.yaml"))
    try:
        plan = campaign.check(Selection(limit=3))
        assert plan["items"] == 3
        assert plan["stages"]["a"]["tasks"] == 3 and plan["stages"]["b"]["tasks"] == 1
        halves = [campaign.check(Selection(shard=(k, 2)))["items"] for k in range(2)]
        assert sum(halves) == 10
    finally:
        campaign.close()
    assert not (tmp_path / ".corral" / "ledger.db").exists()
