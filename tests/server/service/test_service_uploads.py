"""Uploads through the real server and the real client: an image is kept once by the hash of its
bytes, served back, and named by runs; every hostile upload (a wrong type, too many bytes, too
many pixels, a truncated file, a decompression bomb) and every ``start`` that names an image its
model cannot use gets a coded error, leaves nothing in the store and no traceback in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from PIL import Image
from servertools import running_server
from tiny_image_models import make_img2img_pipeline, make_inpaint_pipeline, mask, picture

from stepwatch.client import Refused, connect, upload_image
from stepwatch.protocol import ErrorCode
from stepwatch.protocol import limits as wire
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel, describe_pipeline

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def image_models() -> list[LoadedModel]:
    return [
        describe_pipeline("img2img", make_img2img_pipeline(seed=3)),
        describe_pipeline("inpaint", make_inpaint_pipeline(seed=4)),
    ]


def post(url: str, data: bytes, content_type: str) -> tuple[int, dict[str, object]]:
    """POST ``data`` to the server's upload route as it is (no client-side checks)."""
    address = url.replace("ws://", "http://").removesuffix("/ws") + "/api/uploads"
    request = urllib.request.Request(
        address, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fetch(address: str) -> bytes:
    with urllib.request.urlopen(address, timeout=30) as response:
        data: bytes = response.read()
        return data


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` greyscale pixels, with a few hundred
    bytes of compressed zeros behind it: decoded, it would take ``width*height`` bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def stored(data_dir: Path) -> tuple[int, int]:
    """How many uploads and runs the server's store holds (read after it stopped)."""
    with sqlite3.connect(data_dir / "stepwatch.sqlite3") as db:
        uploads = db.execute("SELECT count(*) FROM uploads").fetchone()[0]
        runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    return int(uploads), int(runs)


def hostile_uploads() -> list[tuple[str, bytes, str, int, ErrorCode]]:
    png = picture()
    return [
        ("text", b"hello", "text/plain", 415, ErrorCode.INVALID_UPLOAD),
        ("gif", b"GIF89a" + b"\0" * 20, "image/gif", 415, ErrorCode.INVALID_UPLOAD),
        ("png called jpeg", png, "image/jpeg", 400, ErrorCode.INVALID_UPLOAD),
        ("not an image", b"\x89PNG but not really", "image/png", 400, ErrorCode.INVALID_UPLOAD),
        ("empty", b"", "image/png", 400, ErrorCode.INVALID_UPLOAD),
        ("truncated png", png[: len(png) // 2], "image/png", 400, ErrorCode.INVALID_UPLOAD),
        (
            "truncated jpeg",
            picture((64, 64), "JPEG")[:300],
            "image/jpeg",
            400,
            ErrorCode.INVALID_UPLOAD,
        ),
        ("too many bytes", b"\0" * (wire.MAX_UPLOAD_BYTES + 1), "image/png", 413,
         ErrorCode.UPLOAD_TOO_LARGE),
        ("too many pixels", bomb_png(2100, 2100), "image/png", 413, ErrorCode.UPLOAD_TOO_LARGE),
        ("a side too long", bomb_png(4096, 16), "image/png", 413, ErrorCode.UPLOAD_TOO_LARGE),
        ("bomb", bomb_png(100_000, 100_000), "image/png", 413, ErrorCode.UPLOAD_TOO_LARGE),
    ]  # fmt: skip


async def test_hostile_uploads_get_coded_errors_and_leave_nothing_behind(
    tmp_path: Path, image_models: list[LoadedModel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answers = {}
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: image_models) as server:
        for name, data, kind, _, _ in hostile_uploads():
            answers[name] = await asyncio.to_thread(post, server.url, data, kind)
        # The client refuses what it can before sending; the server's refusal arrives as Refused.
        with pytest.raises(Refused) as local:
            await upload_image(b"\0" * (wire.MAX_UPLOAD_BYTES + 1), server.url)
        with pytest.raises(Refused) as remote:
            await upload_image(bomb_png(100_000, 100_000), server.url)
    for name, _, _, status, code in hostile_uploads():
        got_status, body = answers[name]
        error = body["error"]
        assert isinstance(error, dict)
        assert (name, got_status, error["code"]) == (name, status, code.value)
        assert error["message"]
    assert local.value.code is ErrorCode.UPLOAD_TOO_LARGE and not local.value.by_server
    assert remote.value.code is ErrorCode.UPLOAD_TOO_LARGE and remote.value.by_server
    assert "decompression bomb" in remote.value.message
    assert stored(tmp_path) == (0, 0)
    assert not [record for record in caplog.records if record.exc_info]


async def test_an_upload_is_kept_once_served_back_and_named_by_its_runs(
    tmp_path: Path, image_models: list[LoadedModel]
) -> None:
    data = picture()
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: image_models) as server:
        async with connect(server.url) as session:
            first = await session.upload(data)
            again = await session.upload(data)
            run = await session.generate(
                "red circle", model="img2img", image=first.id, steps=4, early_stop=False
            )
            result = await run.result()
        base = server.url.replace("ws://", "http://").removesuffix("/ws")
        served = await asyncio.to_thread(fetch, f"{base}/api/uploads/{first.id}")
        record = json.loads(await asyncio.to_thread(fetch, f"{base}/api/runs/{run.run_id}"))
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(fetch, f"{base}/api/uploads/{'0' * 64}")
        missing.value.close()
    assert (first.created, again.created, again.id) == (True, False, first.id)
    assert (first.format, first.width, first.height) == ("png", 32, 32)
    assert served == data
    assert missing.value.code == 404
    assert result.parameters is not None and result.parameters.image == first.id
    assert record["parameters"]["image"] == first.id
    assert record["inputs"] == {"image": f"/api/uploads/{first.id}"}
    assert stored(tmp_path) == (1, 1)


async def test_a_start_naming_images_its_model_cannot_use_is_refused_by_field(
    tmp_path: Path, image_models: list[LoadedModel]
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: image_models) as server:
        async with connect(server.url) as session:
            image = (await session.upload(picture())).id
            small_mask = (await session.upload(mask((16, 16)))).id
            refusals = []
            for options in (
                {"model": "img2img"},  # needs an init image
                {"model": "img2img", "image": "0" * 64},  # an id never uploaded
                {"model": "img2img", "image": image, "control_image": image},  # no ControlNet
                {"model": "img2img", "image": image, "control_scale": 1.0},
                {"model": "inpaint", "image": image},  # needs a mask
                {"model": "inpaint", "image": image, "mask": small_mask},  # of the image's size
                {"model": "img2img", "image": image, "candidates": 2},
            ):
                with pytest.raises(Refused) as refused:
                    await session.generate("red circle", **options)  # type: ignore[arg-type]
                refusals.append((refused.value.code, refused.value.field))
    assert refusals == [
        (ErrorCode.INVALID_UPLOAD, "image"),
        (ErrorCode.UNKNOWN_UPLOAD, "image"),
        (ErrorCode.INVALID_UPLOAD, "control_image"),
        (ErrorCode.INVALID_VALUE, "control_scale"),
        (ErrorCode.INVALID_UPLOAD, "mask"),
        (ErrorCode.INVALID_UPLOAD, "mask"),
        (ErrorCode.INVALID_VALUE, "candidates"),
    ]
    assert stored(tmp_path) == (2, 0)


def test_images_of_every_accepted_mode_are_converted_for_use() -> None:
    from stepwatch.server.uploads import check_upload, open_for_use

    for mode in ("1", "L", "LA", "P", "RGBA", "I;16", "CMYK"):
        image = Image.new(mode, (16, 8))
        buffer = __import__("io").BytesIO()
        image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
        kind = "image/jpeg" if mode == "CMYK" else "image/png"
        checked = check_upload(buffer.getvalue(), kind)
        assert (checked.width, checked.height) == (16, 8)
        assert open_for_use(buffer.getvalue(), "image").mode == "RGB"
        assert open_for_use(buffer.getvalue(), "mask").mode == "L"
