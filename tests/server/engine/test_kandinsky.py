"""Kandinsky 2.2 under the decoder loop the engine drives (:mod:`.kandinsky`): the combined
pipeline's own image bit for bit, MoVQ previews, and the decoder alone refused at load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import make_kandinsky22_pipeline

from stepwatch.server.engine.errors import ModelError
from stepwatch.server.engine.kandinsky import MovqPreview, PriorDecoderLoop
from stepwatch.server.engine.model import describe_pipeline


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return make_kandinsky22_pipeline(seed=2)


def generate(call: Any, cfg: float, **options: Any) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(5)
    out = call(
        "red circle", num_inference_steps=4, guidance_scale=cfg, height=32, width=32,
        generator=generator, output_type="np", **options,
    )  # fmt: skip
    images: np.ndarray = out.images
    return images


# The combined pipeline itself always hands its decoder the deprecated callback_steps.
@pytest.mark.filterwarnings("ignore:`callback_steps` is deprecated:FutureWarning")
@pytest.mark.parametrize("cfg", [4.0, 1.0], ids=["guided", "unguided"])
def test_a_lone_driven_run_is_the_combined_pipelines_own_image_bit_for_bit(
    pipeline: Any, cfg: float
) -> None:
    own = generate(pipeline, cfg, prior_num_inference_steps=PriorDecoderLoop.prior_steps)
    loop = PriorDecoderLoop(pipeline)
    driven = generate(loop, cfg)
    watched = generate(loop, cfg, callback_on_step_end=lambda *a: {})
    assert np.array_equal(driven, own) and np.array_equal(watched, own)
    assert not np.array_equal(generate(loop, cfg + 2.0), own)  # the guidance scale is used


def test_the_combined_pipeline_loads_with_movq_previews_and_live_guidance(pipeline: Any) -> None:
    model = describe_pipeline("kandinsky", pipeline)
    assert isinstance(model.pipeline, PriorDecoderLoop)
    assert tuple(model.decoders) == ("vae",) and isinstance(model.decoders["vae"], MovqPreview)
    assert (model.defaults.width, model.defaults.height, model.defaults.cfg) == (32, 32, 4.0)
    assert model.guided and model.guidance_live and not model.fixed_size
    # A run's scheduler reaches the decoder, not only the combined pipeline's attribute.
    scheduler = model.build_scheduler("euler", "normal")
    model.pipeline.scheduler = scheduler
    assert pipeline.decoder_pipe.scheduler is scheduler


def test_the_kandinsky_decoder_alone_is_refused_at_load(pipeline: Any) -> None:
    with pytest.raises(ModelError, match="takes image embeddings from a prior, not a prompt"):
        describe_pipeline("decoder", pipeline.decoder_pipe)
