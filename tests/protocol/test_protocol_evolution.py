"""Fields added to version 1 reach only the peers that read them (protocol.evolution)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from protocol_examples import SERVER_EXAMPLES

from stepwatch.protocol import (
    ADDED_SERVER_FIELDS,
    Applied,
    CandidateResult,
    Finished,
    Hello,
    Image,
    MessageError,
    Pong,
    SearchSettingChange,
    Set,
    SettingChange,
    Stop,
    Welcome,
    added_in_use,
    all_images_fit,
    decode_client,
    decode_server,
    encode,
    for_peer,
    visible_to,
)


def welcome_with_decoders() -> Welcome:
    welcome = next(m for m in SERVER_EXAMPLES if isinstance(m, Welcome) and m.models)
    models = tuple(
        dataclasses.replace(model, preview_decoders=("linear", "vae")) for model in welcome.models
    )
    return dataclasses.replace(welcome, models=models)


def test_the_added_server_fields_are_named() -> None:
    assert {"preview_decoders", "preview_decoder"} <= ADDED_SERVER_FIELDS
    assert "models" not in ADDED_SERVER_FIELDS and "features" not in ADDED_SERVER_FIELDS


def test_a_client_that_names_no_features_gets_the_first_releases_welcome() -> None:
    welcome = welcome_with_decoders()
    older = msgpack.unpackb(encode(for_peer(welcome, ())))
    assert all("preview_decoders" not in model for model in older["models"])
    newer = msgpack.unpackb(encode(for_peer(welcome, ADDED_SERVER_FIELDS)))
    assert all(model["preview_decoders"] == ["linear", "vae"] for model in newer["models"])
    assert decode_server(encode(for_peer(welcome, ADDED_SERVER_FIELDS))) == welcome


def test_what_has_nothing_to_leave_out_comes_back_as_it_is() -> None:
    welcome = welcome_with_decoders()
    kept = for_peer(welcome, ADDED_SERVER_FIELDS)
    assert kept is welcome
    pong = Pong(3)
    assert for_peer(pong, ()) is pong
    assert for_peer("not a message", ()) == "not a message"
    plain = for_peer(welcome, ())
    assert for_peer(plain, ()) is plain


def test_hello_carries_the_features_a_client_reads() -> None:
    hello = Hello("demo/1", features=("preview_decoders",))
    assert decode_client(encode(hello)) == hello
    assert "features" not in msgpack.unpackb(encode(Hello("old/1")))


def test_an_older_watcher_never_sees_the_search_controls() -> None:
    """A watcher whose ``features`` predate the search controls gets each event in a form it
    accepts: an acknowledgement made only of what it cannot read is not sent at all, one
    that also changed an older setting keeps that part, and the images and the owner's
    marks leave ``finished``."""
    older = ADDED_SERVER_FIELDS - {
        "search_changes",
        "candidate_stopped",
        "candidate_kept",
        "image",
        "by_owner",
        "images",
    }
    stopped = Applied("q7", 9, (), None, candidate_stopped=3, run_id="r", seq=4)
    kept = Applied("q8", 9, (), None, candidate_kept=3, run_id="r", seq=5)
    changed = Applied(
        "q9", 7, (), None, search_changes=(SearchSettingChange("fk_lambda", 10.0, 2.0),)
    )
    assert visible_to(stopped, older) is None and visible_to(kept, older) is None
    assert visible_to(changed, older) is None
    both = dataclasses.replace(changed, changes=(SettingChange("check_interval", 5.0, 2.0),))
    assert visible_to(both, older) == dataclasses.replace(both, search_changes=())
    assert visible_to(stopped, ADDED_SERVER_FIELDS) is stopped
    finished = Finished(
        "completed",
        20,
        1.0,
        0.9,
        (),
        Image(8, 8, b"png"),
        None,
        candidates=(
            CandidateResult(0, 0.9, "chosen", 20, by_owner=True),
            CandidateResult(1, 0.5, "finished", 20, image=Image(8, 8, b"png")),
        ),
        run_id="r",
        seq=9,
    )
    seen = visible_to(finished, older)
    assert seen is not None
    assert seen.candidates == (
        CandidateResult(0, 0.9, "chosen", 20),
        CandidateResult(1, 0.5, "finished", 20),
    )
    assert "image" not in msgpack.unpackb(encode(seen))["candidates"][1]


def test_all_images_fit_within_the_frame_limit() -> None:
    assert all_images_fit(8, 512, 512)
    assert all_images_fit(30, 512, 512) and not all_images_fit(31, 512, 512)
    assert not all_images_fit(2, 2048, 2048)


def test_a_stop_names_candidate_or_keep_not_both() -> None:
    with pytest.raises(MessageError):
        Stop("q", "r", "t" * 16, candidate=1, keep=2)
    assert Set("q", "r", "t" * 16, ess_threshold=0.0).ess_threshold == 0.0


def test_added_in_use_names_the_added_fields_a_message_needs() -> None:
    assert added_in_use(Pong(1)) == frozenset()
    plain = Applied("q", 1, (), "finish", run_id="r", seq=1)
    assert added_in_use(plain) == frozenset()
    finished = Finished(
        "completed",
        1,
        0.0,
        None,
        (),
        None,
        None,
        candidates=(CandidateResult(0, None, "pruned", 1, by_owner=True),),
    )
    assert added_in_use(finished) == {"candidates", "by_owner"}
    assert added_in_use(welcome_with_decoders()) == {"preview_decoders"}
