"""The history through the HTTP API: searching it by prompt, and deleting a run from it, guarded
like the rest of the API (the token; a browser's origin) and never while the run goes on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from scripted_engine import ScriptedEngine
from servertools import connect, running_server
from test_service_store import TOKEN, get, get_json

from stepwatch.protocol import Check
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio


async def delete(url: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    def send() -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(url, method="DELETE", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    return await anyio.to_thread.run_sync(send)


async def test_the_history_is_searched_by_prompt_and_a_finished_run_deleted(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        base = server.http
        ids: dict[str, str] = {}
        async with connect(server.url, token=TOKEN) as client:
            for index, prompt in enumerate(("red circle", "blue square", "small red star")):
                accepted = await client.start(f"q{index}", prompt=prompt, steps=4, check_interval=2)
                await client.run_events(accepted.run_id)
                ids[prompt] = accepted.run_id

            async def found(query: str) -> list[str]:
                page = await get_json(f"{base}/api/runs?{query}")
                return [run["prompt"] for run in page["runs"]]

            assert await found("q=red") == ["small red star", "red circle"]
            assert await found("q=RED%20star") == ["small red star"]
            assert await found("q=%25") == []  # a LIKE wildcard is a character like any other
            assert await found("q=red&limit=1") == ["small red star"]
            assert (await get(f"{base}/api/runs?q={'w%20' * 17}", TOKEN))[0] == 400

            # A run that goes on is not deleted.
            running = await client.start("long", prompt="green star", steps=1000, check_interval=2)
            await client.event(running.run_id, Check)
            status, body = await delete(f"{base}/api/runs/{running.run_id}", bearer)
            assert status == 409 and body["error"]["code"] == "invalid_value"  # type: ignore[index]

            # Deleting asks for the token, and a browser page from elsewhere may not.
            red = ids["red circle"]
            assert (await delete(f"{base}/api/runs/{red}", {}))[0] == 401
            evil = {**bearer, "Origin": "http://evil.example"}
            assert (await delete(f"{base}/api/runs/{red}", evil))[0] == 403
            image = tmp_path / "images" / f"{red}.png"
            assert image.is_file()
            own = {**bearer, "Origin": base}
            assert await delete(f"{base}/api/runs/{red}", own) == (200, {"deleted": red})
            assert not image.exists()
            assert (await get(f"{base}/api/runs/{red}", TOKEN))[0] == 404
            assert (await get_json(f"{base}/api/runs/{red}/previews")) == {"previews": []}
            assert await found("q=red") == ["small red star"]
            assert (await delete(f"{base}/api/runs/{red}", bearer))[0] == 404
