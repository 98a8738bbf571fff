"""Messages as JSON data (:func:`stepwatch.protocol.to_json`), as ``--json`` prints them."""

from __future__ import annotations

import json

from stepwatch.protocol import Check, Finished, HistoryEntry, Preview, Start, stamp, to_json


def test_events_become_json_with_type_first_and_binary_as_base64() -> None:
    check = Check(
        step=5,
        score=0.25,
        components={"edges": 0.5},
        threshold=0.7,
        decision="raise_cfg",
        reason="low",
        cfg=3.0,
        preview=Preview(format="png", width=4, height=2, data=b"\x89PNG"),
    )
    data = json.loads(json.dumps(to_json(stamp(check, "r-1", 3))))
    assert list(data)[:3] == ["type", "run_id", "seq"]
    assert (data["type"], data["run_id"], data["seq"]) == ("check", "r-1", 3)
    assert data["preview"]["data"] == "iVBORw=="
    assert data["components"] == {"edges": 0.5}


def test_nested_parts_become_objects_and_tuples_arrays() -> None:
    entry = HistoryEntry(5, 0.5, {"edges": 0.4}, "continue", 3.0, 0.7, 0.2)
    finished = Finished("completed", 5, 0.3, 0.5, (entry,), None, None, run_id="r", seq=4)
    data = to_json(finished)
    assert isinstance(data, dict)
    assert data["history"] == [
        {
            "step": 5,
            "score": 0.5,
            "components": {"edges": 0.4},
            "decision": "continue",
            "cfg": 3.0,
            "threshold": 0.7,
            "elapsed": 0.2,
        }
    ]
    assert data["image"] is None and "type" not in data["history"][0]


def test_a_check_keeps_its_history_entry() -> None:
    check = Check(7, 0.9, {"clean": 0.4}, 0.7, "early_stop", "held", 4.5, None)
    assert check.entry(1.25) == HistoryEntry(7, 0.9, {"clean": 0.4}, "early_stop", 4.5, 0.7, 1.25)


def test_an_added_field_is_left_out_at_its_default_as_on_the_wire() -> None:
    plain = to_json(Start("q", "red circle"))
    named = to_json(Start("q", "red circle", preview_decoder="vae"))
    assert isinstance(plain, dict) and isinstance(named, dict)
    assert "preview_decoder" not in plain and named["preview_decoder"] == "vae"
