"""The embedded base model's shapes: SD 1.x classes, small enough to train in minutes and run on a CPU.

128 px images, 8x VAE (latents 4 x 16 x 16), a ~4.8M-parameter cross-attention UNet and a
4-layer CLIP text encoder over a BPE vocabulary trained on the toyworld caption grammar.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from studio.models.tokenizer import DEFAULT_CORPUS, build_tokenizer
from trainers.toyworld import IMAGE_SIZE, vocabulary

LATENT_SIZE = IMAGE_SIZE // 8
TEXT_WIDTH = 128
SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def tokenizer_words() -> list[str]:
    """The caption grammar plus common prompt words, so user prompts still tokenize well."""
    return sorted({*vocabulary(), *DEFAULT_CORPUS})


def make_tokenizer() -> CLIPTokenizer:
    return build_tokenizer(tokenizer_words())


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64, 96, 128],
        layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
        norm_num_groups=32,
    )


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 96, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    vocab = tokenizer.get_vocab()
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_attention_heads=4,
            num_hidden_layers=4,
            projection_dim=TEXT_WIDTH,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER)


def make_pipeline(vae, unet, text_encoder, tokenizer) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
