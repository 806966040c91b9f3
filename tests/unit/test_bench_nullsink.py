"""The no-op sink's bulk answer: one success item per action, in order, sources skipped."""

from __future__ import annotations

import json

import pytest

from bench.nullsink import bulk_response


def test_every_action_gets_a_success_item_in_request_order():
    body = (b'{"index":{"_index":"i","_id":"block:1","version":7,"version_type":"external_gte"}}\n'
            b'{"text":"{\\"delete\\":{}}"}\n'
            b'{"delete":{"_index":"i","_id":"block:2","version":9}}\n'
            b'{"create":{"_index":"i","_id":"block:3"}}\n{"text":"x"}\n')
    data, n = bulk_response(body)
    answer = json.loads(data)
    assert n == 3 and answer["errors"] is False
    assert [list(i) for i in answer["items"]] == [["index"], ["delete"], ["create"]]
    assert answer["items"][0]["index"] == {"_index": "i", "_id": "block:1", "_version": 7,
                                           "result": "created", "status": 201, "_seq_no": 0,
                                           "_primary_term": 1}
    assert answer["items"][1]["delete"]["status"] == 200
    assert answer["items"][1]["delete"]["_id"] == "block:2"


def test_empty_body_has_no_items_and_a_bad_line_is_refused():
    assert json.loads(bulk_response(b"\n")[0])["items"] == []
    with pytest.raises(ValueError):
        bulk_response(b"not json\n")
