"""Build the tiny random-weight models the ComfyUI tests load; run with ComfyUI's Python.

    python make_models.py COMFYUI_DIR MODELS_DIR

writes ``MODELS_DIR/diffusion_models/tiny_sd15.safetensors``, an SD 1.x UNet that ComfyUI's
model detection reads as SD 1.5 (``model_channels`` 320, ``context_dim`` 768, no linear
projections, no ``adm``) with one level, one res block and one transformer block (about 26 M
parameters), and ``MODELS_DIR/vae_approx/taesd_{encoder,decoder}.safetensors``, a TAESD that
``VAELoader`` offers as ``taesd``. The weights are random but seeded (scaled by each layer's
fan-in). It runs in ComfyUI's environment because the layer names are ComfyUI's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def _initialise(module: torch.nn.Module, generator: torch.Generator) -> None:
    # ComfyUI's layers skip weight initialisation (its loader fills them), so fill them here.
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim == 0:
                continue  # TAESD's scale and shift: the loader sets them
            if parameter.ndim == 1:
                is_norm_scale = name.endswith("weight")
                parameter.fill_(1.0 if is_norm_scale else 0.0)
            else:
                fan_in = parameter[0].numel()
                parameter.normal_(0.0, fan_in**-0.5, generator=generator)


def main(comfyui_dir: str, models_dir: str) -> None:
    sys.path.insert(0, comfyui_dir)

    from comfy.cli_args import args

    args.cpu = True  # read when comfy.model_management is first imported
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        model_channels=320,
        out_channels=4,
        num_res_blocks=[1],
        channel_mult=[1],
        transformer_depth=[1],
        transformer_depth_output=[1, 1],
        transformer_depth_middle=1,
        context_dim=768,
        num_heads=8,
        use_spatial_transformer=True,
        use_linear_in_transformer=False,
        legacy=False,
        operations=comfy.ops.disable_weight_init,
    )
    _initialise(unet, generator)
    root = Path(models_dir)
    (root / "diffusion_models").mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in unet.state_dict().items()}
    save_file(state, str(root / "diffusion_models" / "tiny_sd15.safetensors"))

    taesd = TAESD(latent_channels=4)
    _initialise(taesd, generator)
    (root / "vae_approx").mkdir(parents=True, exist_ok=True)
    for part in ("encoder", "decoder"):
        module = getattr(taesd, f"taesd_{part}")
        weights = {key: value.contiguous() for key, value in module.state_dict().items()}
        save_file(weights, str(root / "vae_approx" / f"taesd_{part}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
