"""Pure parts of ``rebuild``: physical index names, NDJSON action ranges, the summary line."""

import datetime as dt

from wordloom_outbox.ops.rebuild import (RebuildReport, _delete_action, _index_action,
                                         _line_ranges, is_physical_of, physical_name)


def test_physical_names_belong_to_their_alias_only():
    name = physical_name("wordloom-search-index",
                         dt.datetime(2024, 3, 1, 12, 0, 5, tzinfo=dt.timezone.utc))
    assert name.startswith("wordloom-search-index-20240301120005-")
    assert is_physical_of("wordloom-search-index", name)
    assert not is_physical_of("wordloom-search", name)  # another alias's prefix
    assert not is_physical_of("wordloom-search-index", "wordloom-search-index-old")
    assert not is_physical_of("wordloom-search-index", "wordloom-search-index")
    assert physical_name("a") != physical_name("a")


def test_line_ranges_pair_sources_with_index_actions_only():
    lines = [_index_action("i", "block:1", 5), b'{"text":"x"}\n',
             _delete_action("i", "block:2", 7),
             _index_action("i", "book:3", 9), b'{"text":"y"}\n',
             _delete_action("i", "tag:4", 1)]
    assert _line_ranges(lines) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert b'"version_type":"external_gte"' in lines[0] and b'"version":7' in lines[2]


def test_summary_line_by_mode():
    load = RebuildReport(alias="a", mode="load", truncate=False, new_index="a-1", rows=3,
                         loaded=3, caught_up=1, old_indices=["a"], seconds=1.25)
    assert load.line() == ("rebuild: ok mode=load alias=a index=a-1 rows=3 loaded=3 rejected=0 "
                           "caught_up=1 old=a dropped=- truncate=false seconds=1.2")
    emit = RebuildReport(alias="a", mode="emit-outbox", truncate=False, rows=3, enqueued=3)
    assert emit.line().startswith("rebuild: ok mode=emit-outbox alias=a index=- rows=3 "
                                  "enqueued=3 old=- ")
    bad = RebuildReport(alias="a", mode="load", truncate=True, rejected_count=2,
                        rejected=["block:1: bad"])
    assert not bad.ok and bad.line().startswith("rebuild: rejected ")
    assert bad.as_json()["rejected"] == ["block:1: bad"] and bad.as_json()["ok"] is False
