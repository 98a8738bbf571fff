"""A real ComfyUI for the tests: started on the CPU on a loopback port, driven over HTTP and WS.

ComfyUI comes from ``$COMFYUI_DIR``, else ``../shared/comfyui`` beside the repository; it runs
under ``$STEPWATCH_COMFYUI_PYTHON``, else ``.venv-comfyui/bin/python`` (``make test`` builds
that environment). Its writable folders live under a temporary ``--base-directory`` that also
holds the tiny models (built by ``make_models.py``), stepwatch's nodes (installed with the real
``stepwatch comfyui-install``) and the test node pack.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coverage
from websockets.sync.client import ClientConnection, connect

from stepwatch.client.cli import main as stepwatch_main

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STARTUP_SECONDS = 180.0
#: ComfyUI's binary WebSocket events (its protocol.BinaryEventTypes).
PREVIEW_IMAGE = 1
TEXT = 3


class ComfyUIUnavailable(RuntimeError):
    """ComfyUI or its environment is missing; the message says how to provide it."""


def comfyui_dir() -> Path:
    """The ComfyUI checkout the tests run."""
    named = os.environ.get("COMFYUI_DIR")
    candidate = Path(named) if named else REPO.parent / "shared" / "comfyui"
    if not (candidate / "main.py").is_file():
        raise ComfyUIUnavailable(
            f"no ComfyUI at {candidate}: set COMFYUI_DIR to a ComfyUI checkout "
            "(the tests use Comfy-Org/ComfyUI a125cd8)"
        )
    return candidate


def comfyui_python() -> Path:
    """The Python of ComfyUI's environment."""
    named = os.environ.get("STEPWATCH_COMFYUI_PYTHON")
    python = Path(named) if named else REPO / ".venv-comfyui" / "bin" / "python"
    if not python.is_file():
        raise ComfyUIUnavailable(
            f"no ComfyUI environment at {python}: run `make .venv-comfyui/.installed`"
        )
    return python


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Message:
    """One WebSocket message: a JSON event, or a binary one (preview image, progress text)."""

    kind: str
    data: Any


@dataclass
class Execution:
    """What the WebSocket showed for one prompt, up to its end."""

    prompt_id: str
    messages: list[Message] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        """The data of every message of ``kind``."""
        return [message.data for message in self.messages if message.kind == kind]

    @property
    def outcome(self) -> str:
        """``execution_success``, ``execution_error`` or ``execution_interrupted``."""
        return self.messages[-1].kind


@dataclass
class ComfyUI:
    """A running ComfyUI; :meth:`run` posts a workflow and collects its WebSocket messages."""

    url: str
    base: Path
    log: Path
    process: subprocess.Popen[bytes]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: object) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return json.loads(text) if text else None

    @contextmanager
    def socket(self) -> Iterator[tuple[ClientConnection, str]]:
        client_id = uuid.uuid4().hex
        ws_url = self.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        with connect(ws_url, max_size=None, open_timeout=30) as ws:
            yield ws, client_id

    def queue(self, client_id: str, workflow: dict[str, Any]) -> str:
        answer = self.post("/prompt", {"prompt": workflow, "client_id": client_id})
        prompt_id: str = answer["prompt_id"]
        return prompt_id

    def run(self, workflow: dict[str, Any], timeout: float = 300.0) -> Execution:
        """Queue ``workflow`` and return its messages once it succeeds, fails or is stopped."""
        with self.socket() as (ws, client_id):
            execution = Execution(self.queue(client_id, workflow))
            watch(ws, execution, timeout)
            return execution

    def output_file(self, name_prefix: str, suffix: str) -> Path:
        (found,) = sorted((self.base / "output").rglob(f"{name_prefix}*{suffix}"))
        return found


END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


def watch(ws: ClientConnection, execution: Execution, timeout: float, until: str = "") -> None:
    """Read messages of ``execution`` into it until it ends (or a message of kind ``until``)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"prompt {execution.prompt_id} did not end in {timeout} s")
        frame = ws.recv(timeout=remaining)
        if isinstance(frame, bytes):
            (event,) = struct.unpack(">I", frame[:4])
            kind = {PREVIEW_IMAGE: "preview", TEXT: "text"}.get(event, f"binary-{event}")
            execution.messages.append(Message(kind, frame[4:]))
            continue
        message = json.loads(frame)
        data = message.get("data", {})
        if data.get("prompt_id") not in (None, execution.prompt_id):
            continue
        execution.messages.append(Message(message["type"], data))
        if message["type"] in END_EVENTS or message["type"] == until:
            return


def prepare_base(base: Path, comfyui: Path, python: Path) -> None:
    """Lay out ComfyUI's base directory: models, stepwatch's nodes, the test nodes."""
    models = base / "models"
    subprocess.run(
        [str(python), str(HERE / "make_models.py"), str(comfyui), str(models)],
        check=True,
        cwd=base,
        timeout=300,
    )
    (base / "custom_nodes").mkdir()
    assert stepwatch_main(["comfyui-install", str(base)]) == 0
    shutil.copytree(HERE / "node_pack" / "stepwatch_test_nodes", base / "custom_nodes" / "tests")


@contextmanager
def running_comfyui(base: Path) -> Iterator[ComfyUI]:
    """Start ComfyUI on ``base`` (laid out by :func:`prepare_base`) and stop it afterwards."""
    comfyui, python = comfyui_dir(), comfyui_python()
    port = _free_port()
    log = base / "comfyui.log"
    interpreter, measuring = _python_command(python)
    env = {
        **os.environ,
        **measuring,
        # The node pack first; a caller's PYTHONPATH after it (e.g. a tree that puts another
        # checkout's stepwatch before the environment's editable install).
        "PYTHONPATH": os.pathsep.join(
            [str(HERE / "node_pack"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        *interpreter,
        str(comfyui / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        "--database-url",
        "sqlite:///:memory:",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=base, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    server = ComfyUI(f"http://127.0.0.1:{port}", base, log, process)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        # Ctrl-C is ComfyUI's own way out: it returns from main, so coverage saves its data.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _python_command(python: Path) -> tuple[list[str], dict[str, str]]:
    """ComfyUI's Python and its environment: under coverage when the tests are.

    ComfyUI's process then writes its own data file beside the tests' (``make test`` combines
    them), so the nodes' coverage is measured where they run.
    """
    current = coverage.Coverage.current()
    if current is None:
        return [str(python)], {}
    rcfile = REPO / "pyproject.toml"
    command = [str(python), "-m", "coverage", "run", "--parallel-mode", f"--rcfile={rcfile}"]
    return command, {"COVERAGE_FILE": os.path.abspath(current.config.data_file)}


def _wait_until_serving(server: ComfyUI) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited at start-up:\n{server.log.read_text()[-4000:]}")
        try:
            server.get("/system_stats")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise TimeoutError(f"ComfyUI did not serve in {STARTUP_SECONDS} s:\n{server.log.read_text()}")
