"""A custom verifier's answer is checked where it is received: a word, ``None`` or a component
named by a number fails the run with ``verifier_failed`` (not ``internal``, no traceback); and
the sampler runs on the number of torch threads the server is told."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from servertools import ThreadCountVerifier, connect, running_server

from stepwatch.protocol import ErrorCode, Finished
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "verifier", ["WordyVerifier", "NoneVerifier", "NumberedComponentsVerifier"]
)
async def test_a_verifier_answering_no_number_fails_the_run_as_verifier_failed(
    tmp_path: Path, served_model: LoadedModel, verifier: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = ServerConfig(data_dir=tmp_path, verifiers=(f"odd=servertools:{verifier}",))
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "a", prompt="red circle", steps=4, check_interval=2, verifier="odd"
            )
            finished = (await client.run_events(accepted.run_id))[-1]
    assert isinstance(finished, Finished) and finished.reason == "failed"
    assert finished.error is not None and finished.error.code is ErrorCode.VERIFIER_FAILED
    assert "Traceback" not in caplog.text


async def test_the_sampler_uses_the_configured_number_of_threads(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    config = ServerConfig(
        data_dir=tmp_path,
        verifiers=("threads=servertools:ThreadCountVerifier",),
        sampler_threads=wanted,
    )
    ThreadCountVerifier.seen.clear()
    try:
        async with running_server(config, lambda c: [served_model]) as server:
            async with connect(server.url) as client:
                accepted = await client.start(
                    "a", prompt="red circle", steps=4, check_interval=2, verifier="threads"
                )
                await client.run_events(accepted.run_id)
    finally:
        torch.set_num_threads(before)
    assert ThreadCountVerifier.seen and set(ThreadCountVerifier.seen) == {wanted}


def test_the_default_thread_count_leaves_room_for_other_work() -> None:
    threads = ServerConfig().sampler_threads
    assert 1 <= threads <= 8
    assert threads <= max(1, (len(os.sched_getaffinity(0)) + 1) // 2)
