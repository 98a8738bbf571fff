"""A real stepwatch server for the browser tests, in a thread of its own: :func:`served`.

It serves the built dashboard the way ``stepwatch serve`` does, from the installed package. The
model is a tiny random-weight Stable Diffusion pipeline built offline, given a closed
vocabulary so that the dashboard offers its words and the server refuses others. Its runs take
a few hundred milliseconds per ten steps on a busy CPU, so the tests ask for enough steps to act
while a run goes on, and stop it themselves.
"""

from __future__ import annotations

import os
import socket
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.applications import Starlette

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from stepwatch.server.app import Service, create_app  # noqa: E402
from stepwatch.server.config import ServerConfig  # noqa: E402
from stepwatch.server.engine.model import (  # noqa: E402
    LoadedModel,
    PromptVocabulary,
    describe_pipeline,
)
from stepwatch.server.serving import serve  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")

torch.set_num_threads(1)


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD 1.x pipeline with a few thousand parameters: 32×32 images, offline."""
    torch.manual_seed(seed)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        vocab_size=len(tokenizer),
    )
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def check_prompt(prompt: str) -> None:
    """Refuse words outside the vocabulary, as a closed-vocabulary model does."""
    known = set(COLOURS) | set(SHAPES)
    unknown = [word for word in prompt.lower().split() if word not in known]
    if unknown:
        raise ValueError(f"unknown words {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def tiny_model() -> LoadedModel:
    vocabulary = PromptVocabulary(
        attributes={"colour": COLOURS, "shape": SHAPES},
        description="a tiny random-weight test model; prompts name a colour and a shape",
    )
    return describe_pipeline(
        "tiny-shapes", tiny_pipeline(), vocabulary=vocabulary, prompt_check=check_prompt
    )


@dataclass(frozen=True)
class DashboardServer:
    url: str
    config: ServerConfig
    app: Starlette
    portal: BlockingPortal

    def drop_connections(self) -> None:
        """Close every open connection (1012, "service restart"), as a network blip would;
        runs go on."""

        def drop() -> None:
            service: Service = self.app.state.service
            for session in list(service.sessions):
                session.close(1012, "dropped by the test")

        self.portal.call(drop)


@contextmanager
def served(config: ServerConfig, port: int = 0) -> Iterator[DashboardServer]:
    """Serve ``config`` with the tiny model on a loopback port (``0``: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    app = create_app(config, load_models=lambda _config: [tiny_model()])
    ready = threading.Event()
    with start_blocking_portal(backend="asyncio") as portal:
        stop = portal.call(anyio.Event)
        status = portal.start_task_soon(
            lambda: serve(app, config, stop, sock=sock, on_ready=lambda _h, _p: ready.set())
        )
        assert ready.wait(120), "the server did not start"
        try:
            yield DashboardServer(f"http://127.0.0.1:{port}", config, app, portal)
        finally:
            portal.call(stop.set)
            assert status.result(timeout=60) == 0
