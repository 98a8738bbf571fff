"""What a hostile or broken client can make the server hold, and what it writes to its log:
sockets of dropped readers, half-sent requests, connections per address, abrupt disconnects,
oversized frames, huge headers, foreign Hosts. Every loop here is bounded and on loopback.

The server runs in the test's event loop: a blocking read of a raw socket goes to a thread."""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import pytest
import uvicorn
import websockets
from scripted_engine import ScriptedEngine
from servertools import Client, connect, running_server
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState
from websockets.exceptions import InvalidStatus

from stepwatch.protocol import SUBPROTOCOL, Hello, Progress, Stop, Subscribe, encode
from stepwatch.protocol import limits as wire
from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.connections import protocols
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio

ATTACKER = "127.0.0.2"  # another loopback address: the per-address cap must not hit the tests


def upgrade_request(
    port: int, host: str | None = None, extra: str = "", path: str = "/ws"
) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n{extra}\r\n"
    ).encode()


def masked(payload: bytes) -> bytes:
    """One client WebSocket binary frame (clients mask what they send)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + body


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed before a response head: {head!r}"
        head += chunk
    return head


def server_end_open(server_port: int, client_port: int) -> bool:
    """Whether the kernel still holds the server's end of a loopback connection."""
    local, remote = f":{server_port:04X}", f":{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local) and fields[2].endswith(remote) and fields[3] != "0A":
            return True
    return False


@contextmanager
def raw_socket(
    port: int, source: str = "127.0.0.1", rcvbuf: int | None = None
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    try:
        yield sock
    finally:
        sock.close()


def http_status(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url)
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes or resets ``sock`` within ``within`` seconds (data is read)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


async def test_a_dropped_slow_reader_does_not_pin_its_socket(
    tmp_path: Path, large_preview_model: LoadedModel
) -> None:
    limits = ServiceLimits(send_timeout=0.5, request_timeout=1.0, shutdown_timeout=5.0)
    config = ServerConfig(data_dir=tmp_path, limits=limits)
    async with running_server(config, lambda c: [large_preview_model], send_buffer=4096) as server:
        async with connect(server.url) as owner:  # the run goes on after its owner leaves
            accepted = await owner.start(
                "a",
                prompt="red circle",
                steps=1000,
                check_interval=1,
                preview_format="png",
                early_stop=False,
                width=128,
                height=128,
            )
        with raw_socket(server.port, rcvbuf=4096) as reader:
            reader.sendall(upgrade_request(server.port))
            assert b" 101 " in await anyio.to_thread.run_sync(read_head, reader)
            reader.sendall(masked(encode(Hello(client="never-reads/1"))))
            reader.sendall(masked(encode(Subscribe(accepted.run_id, 0))))
            client_port = reader.getsockname()[1]
            # The reader never reads: the server drops it, then must let go of its socket.
            with anyio.fail_after(30):
                while server_end_open(server.port, client_port):  # noqa: ASYNC110
                    await anyio.sleep(0.2)


async def test_half_sent_requests_time_out_and_one_address_holds_only_so_many(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    limits = ServiceLimits(max_connections_per_client=4, request_timeout=1.0)
    config = ServerConfig(data_dir=tmp_path, limits=limits)
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        partial = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
        with ExitStack() as stack:
            held = [stack.enter_context(raw_socket(server.port, ATTACKER)) for _ in range(6)]
            for sock in held:
                sock.sendall(partial)
            # Beyond the cap: closed at once, unanswered.
            for sock in held[4:]:
                assert await anyio.to_thread.run_sync(closed_by_peer, sock, 2.0)
            # Another address is served meanwhile.
            status = await anyio.to_thread.run_sync(http_status, f"{server.http}/healthz")
            assert status == 200
            # The half-sent requests are closed once the request timeout passes.
            for sock in held[:4]:
                assert await anyio.to_thread.run_sync(closed_by_peer, sock, 5.0)
        # Their slots are free again.
        with raw_socket(server.port, ATTACKER) as sock:
            sock.sendall(partial + b"\r\n")
            assert b" 200 " in await anyio.to_thread.run_sync(read_head, sock)


async def abrupt_watchers(url: str, run_id: str, count: int) -> None:
    """Watch ``run_id`` ``count`` times and leave each time with a TCP reset, no close."""
    for _ in range(count):
        ws = await websockets.connect(
            url, subprotocols=[SUBPROTOCOL], max_size=wire.MAX_SERVER_FRAME_BYTES, compression=None
        )
        client = Client(ws)
        await client.send(Hello(client="abrupt/1"))
        await client.send(Subscribe(run_id, 0))
        await client.event(run_id, Progress)
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()
        await ws.close()


async def test_abrupt_disconnects_are_not_taken_for_slow_consumers(
    tmp_path: Path,
    served_model: LoadedModel,
    caplog: pytest.LogCaptureFixture,
    scripted: ScriptedEngine,
) -> None:
    caplog.set_level(logging.INFO)
    config = ServerConfig(data_dir=tmp_path)
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        async with connect(server.url) as owner:
            accepted = await owner.start(
                "a", prompt="red circle", steps=1000, check_interval=1, early_stop=False
            )
            await abrupt_watchers(server.url, accepted.run_id, 30)
            await owner.send(Stop("s", accepted.run_id, accepted.control_token, "abort"))
            await owner.run_events(accepted.run_id)
    assert "does not read its events" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]


async def test_a_send_after_the_transport_closed_the_websocket_is_a_disconnect(
    tmp_path: Path,
) -> None:
    """A frame over the transport limit makes the WebSocket layer close (1009) on its own; a
    send the session makes before it hears of that is told the client is gone (as a send to a
    reset connection is), not a RuntimeError with a traceback."""
    config = ServerConfig(data_dir=tmp_path)
    _http, websocket = protocols(config.limits)
    uvicorn_config = uvicorn.Config(lambda scope, receive, send: None)
    uvicorn_config.load()
    connection = websocket(config=uvicorn_config, server_state=ServerState(), app_state={})
    connection.handshake_complete = connection.close_sent = True  # as after its 1009 close
    for message in ({"type": "websocket.send", "bytes": b"x"}, {"type": "websocket.close"}):
        with pytest.raises(ClientDisconnected):
            await connection.send(message)  # type: ignore[arg-type]


async def test_only_the_hosts_the_server_is_served_under_are_answered(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, allowed_hosts=("stepwatch.lan",))
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        api = f"{server.http}/api/runs"
        for host, expected in (
            (f"127.0.0.1:{server.port}", 200),
            (f"localhost:{server.port}", 200),
            (f"stepwatch.lan:{server.port}", 200),
            (f"evil.example:{server.port}", 400),
            ("evil.example", 400),
        ):
            assert await anyio.to_thread.run_sync(http_status, api, host) == expected, host
        rebound = {"Host": f"evil.example:{server.port}"}
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                server.url, additional_headers=rebound, origin=f"http://evil.example:{server.port}"
            ):
                pass
        assert refused.value.response.status_code == 400
        # Another local page (any port but the server's own) is no longer let in.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, origin="http://localhost:5173"):
                pass
        assert refused.value.response.status_code == 403
        async with connect(server.url, origin=f"http://127.0.0.1:{server.port}") as client:
            assert client.welcome is not None


async def test_a_huge_upgrade_header_is_answered_at_once_and_urls_keep_tokens_out_of_the_log(
    tmp_path: Path,
    served_model: LoadedModel,
    caplog: pytest.LogCaptureFixture,
    scripted: ScriptedEngine,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        with raw_socket(server.port) as sock:
            sock.settimeout(3)
            sock.sendall(upgrade_request(server.port, extra=f"X-Big: {'a' * 100_000}\r\n"))
            status = (await anyio.to_thread.run_sync(read_head, sock)).split(b" ")[1]
            assert status in (b"400", b"431")
        async with connect(f"{server.url}?token=do-not-log-me") as client:
            assert client.welcome is not None
        with pytest.raises(InvalidStatus):
            async with connect(server.url, origin="https://evil.example"):
                pass
    assert "do-not-log-me" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
