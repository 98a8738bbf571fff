"""Preview decoders on the wire: ``start.preview_decoder``, ``ModelInfo.preview_decoders`` and
``RunParameters.preview_decoder`` came into version 1 later, so a peer that predates them never
sees them unless they hold a value."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from protocol_examples import PARAMETERS, SD_TINY

from stepwatch.protocol import (
    ErrorCode,
    MessageError,
    Start,
    Started,
    Welcome,
    decode_client,
    decode_server,
    encode,
)


def frame_of(message: object) -> dict[str, object]:
    unpacked: dict[str, object] = msgpack.unpackb(encode(message), raw=False)  # type: ignore[arg-type]
    return unpacked


def test_a_start_naming_no_decoder_is_the_frame_an_older_server_reads() -> None:
    assert "preview_decoder" not in frame_of(Start(request_id="q", prompt="p"))
    named = decode_client(encode(Start(request_id="q", prompt="p", preview_decoder="tiny")))
    assert isinstance(named, Start) and named.preview_decoder == "tiny"


def test_models_list_their_decoders_and_started_reports_a_named_one() -> None:
    welcome = Welcome(server="s", capabilities=(), limits={}, models=(SD_TINY,), verifiers=())
    [model] = frame_of(welcome)["models"]  # type: ignore[misc]
    assert model["preview_decoders"] == ["linear", "tiny", "vae"]
    unannounced = dataclasses.replace(
        welcome, models=(dataclasses.replace(SD_TINY, preview_decoders=()),)
    )
    assert "preview_decoders" not in frame_of(unannounced)["models"][0]  # type: ignore[index]
    started = Started(parameters=dataclasses.replace(PARAMETERS, preview_decoder="vae"))
    started = dataclasses.replace(started, run_id="r-1", seq=1)
    decoded = decode_server(encode(started))
    assert isinstance(decoded, Started) and decoded.parameters.preview_decoder == "vae"
    plain = frame_of(dataclasses.replace(started, parameters=PARAMETERS))
    assert "preview_decoder" not in plain["parameters"]  # type: ignore[operator]


@pytest.mark.parametrize("value", ["", 7, "x" * 65])
def test_a_malformed_decoder_name_is_a_coded_error(value: object) -> None:
    frame = msgpack.packb(
        {"type": "start", "v": 1, "request_id": "q", "prompt": "p", "preview_decoder": value}
    )
    with pytest.raises(MessageError) as caught:
        decode_client(frame)
    assert caught.value.code is ErrorCode.INVALID_VALUE
    assert caught.value.field == "preview_decoder"
