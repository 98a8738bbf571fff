"""Tiny random-weight pipelines on T5 and Gemma text encoders, built offline: AuraFlow,
Lumina 2 and Kandinsky 3.

Built models are in training mode, so T5's dropout is switched off (it would draw noise).
Their tokenizers are built in memory, as :func:`tiny_models.tiny_tokenizer` builds CLIP's: a T5
(sentencepiece unigram) vocabulary of single letters and digits, a Gemma (BPE) one of single
characters without merges.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AuraFlowPipeline,
    AuraFlowTransformer2DModel,
    AutoencoderKL,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    Kandinsky3Pipeline,
    Kandinsky3UNet,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    VQModel,
)
from tiny_models import tiny_vae
from transformers import (
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer over single letters and digits (word-initial letters too)."""
    pieces = [(c, -1.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("▁" + c, -1.0) for c in string.ascii_lowercase]
    tokenizer = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces])
    assert len(tokenizer("red circle").input_ids) == len("redcircle") + 1  # and </s>
    return tokenizer


def tiny_gemma_tokenizer() -> GemmaTokenizer:
    """A Gemma tokenizer over single characters, without merges."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for char in string.ascii_lowercase + string.digits + " ▁":
        vocab.setdefault(char, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[])


def make_auraflow_pipeline(seed: int = 0) -> AuraFlowPipeline:
    """A tiny AuraFlow pipeline (MMDiT, flow matching, UMT5, an SDXL-scaled VAE), 32×32 images;
    it has no ``interrupt`` property and reads its guidance scale once per run."""
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text = UMT5Config(
        d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=len(tokenizer),
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )  # fmt: skip
    transformer = AuraFlowTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_mmdit_layers=1,
        num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pos_embed_max_size=64,
    )  # fmt: skip
    pipeline = AuraFlowPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(text),
        vae=tiny_vae(0.13025),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_lumina2_pipeline(seed: int = 0) -> Lumina2Pipeline:
    """A tiny Lumina 2 pipeline (Gemma 2 text encoder, flow matching, a Flux-scaled 16-channel
    VAE, as the real model has); it has no ``interrupt`` property and reads its guidance scale
    at every step. It makes 32×32 images when asked (its default size is 128×128)."""
    torch.manual_seed(seed)
    tokenizer = tiny_gemma_tokenizer()
    text = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0,
    )  # fmt: skip
    transformer = Lumina2Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, hidden_size=32, num_layers=1,
        num_refiner_layers=1, num_attention_heads=4, num_kv_heads=2, multiple_of=16,
        axes_dim_rope=(4, 2, 2), axes_lens=(512, 32, 32), cap_feat_dim=32,
    )  # fmt: skip
    # Four blocks: the pipeline takes the VAE's scale factor to be 8, as the real one's is.
    vae = AutoencoderKL(
        block_out_channels=(4, 4, 8, 8), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=16, norm_num_groups=2, sample_size=32,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
        shift_factor=0.1159,
    )  # fmt: skip
    pipeline = Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=Gemma2Model(text),
        tokenizer=tokenizer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_kandinsky3_pipeline(seed: int = 0) -> Kandinsky3Pipeline:
    """A tiny Kandinsky 3 pipeline (T5, ``Kandinsky3UNet``, MoVQ, DDPM)."""
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text = T5Config(
        d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=len(tokenizer),
        dropout_rate=0.0,
    )  # fmt: skip
    unet = Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
        block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32,
    )  # fmt: skip
    movq = VQModel(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, vq_embed_dim=4,
    )  # fmt: skip
    pipeline = Kandinsky3Pipeline(
        tokenizer=tokenizer,
        text_encoder=T5EncoderModel(text),
        unet=unet,
        scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", steps_offset=1),
        movq=movq,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
