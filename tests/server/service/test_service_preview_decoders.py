"""A client chooses the preview decoder of its run over the protocol, among those the model
lists in ``welcome``; any other name is a coded error and nothing runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from servertools import connect, running_server
from tiny_models import make_sd_pipeline, make_tiny_autoencoder

from stepwatch.protocol import Check, Error, ErrorCode, Finished, Start, Started
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import describe_pipeline

pytestmark = pytest.mark.anyio


async def test_a_run_uses_the_decoder_it_names_and_started_reports_it(tmp_path: Path) -> None:
    model = describe_pipeline(
        "tiny", make_sd_pipeline(seed=4), tiny_autoencoder=make_tiny_autoencoder()
    )
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [model]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            (info,) = client.welcome.models
            runs = {}
            for decoder in (None, "vae", "tiny"):
                accepted = await client.start(
                    f"q-{decoder}",
                    prompt="red circle",
                    steps=4,
                    check_interval=2,
                    early_stop=False,
                    preview_decoder=decoder,
                    preview_format="png",
                )
                runs[decoder] = await client.run_events(accepted.run_id)
            await client.send(Start("q-bad", "red circle", preview_decoder="jpeg2000"))
            refused = await client.reply_to("q-bad")
    assert info.preview_decoders == ("linear", "tiny", "vae")
    sizes = {}
    for decoder, events in runs.items():
        started = events[0]
        assert isinstance(started, Started) and started.parameters.preview_decoder == decoder
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.reason == "completed"
        previews = [e.preview for e in events if isinstance(e, Check)]
        assert len(previews) == 2 and all(p is not None for p in previews)
        first = previews[0]
        assert first is not None
        sizes[decoder] = Image.open(io.BytesIO(first.data)).size
    # linear previews are at the latent's 16×16; both autoencoders decode to the image's 32×32.
    assert sizes == {None: (16, 16), "vae": (32, 32), "tiny": (32, 32)}
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
    assert refused.field == "preview_decoder" and "one of linear, tiny, vae" in refused.message


async def test_a_client_of_the_first_release_gets_a_welcome_without_the_added_fields(
    tmp_path: Path,
) -> None:
    model = describe_pipeline("tiny", make_sd_pipeline(seed=4))
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [model]) as server:
        async with connect(server.url, features=()) as older:
            assert older.welcome is not None
            (info,) = older.welcome.models
            assert info.preview_decoders == ()  # left out of the frame: it would be refused
        async with connect(server.url) as newer:
            assert newer.welcome is not None
            (info,) = newer.welcome.models
            assert info.preview_decoders[0] == "linear" and "vae" in info.preview_decoders
