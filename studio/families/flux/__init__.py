"""Flux.1 (dev, schnell): a 12B MMDiT, CLIP-L pooled text + T5 XXL hidden states, packed latents.

The transformer sees 2x2 patches of the 16-channel latents as tokens (``_pack_latents``),
each with a 3-axis RoPE id (``img_ids``; the text's ``txt_ids`` are zeros), the timestep as
``σ`` in [0, 1], CLIP-L's pooled output, and (dev only) the distilled guidance scale as an
embedding. Training shifts ``σ`` by the image's token count exactly as FluxPipeline shifts
its inference schedule (``use_dynamic_shifting``), so the LoRA trains where it samples.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from studio.families.base import DenoiserInput, TextEmbeddings
from studio.families.flow import FlowMatchingFamily, clip_embeddings

_CLIP_ATTN = r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$"
_JOINT_ATTN = (
    r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
)
_SINGLE_ATTN = r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)"
_DOUBLE_REST = r"transformer_blocks\.\d+\.(norm1\.linear|norm1_context\.linear|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"
_SINGLE_REST = r"single_transformer_blocks\.\d+\.(proj_mlp|proj_out|norm\.linear)"

# ``cross-attn``: the double-stream blocks' joint attention, where text meets image;
# ``attn``: every attention projection (single-stream blocks' q/k/v too);
# ``full``: every Linear of every block, kohya sd-scripts' default coverage (lora_flux.py:
# all Linears of DoubleStreamBlock and SingleStreamBlock, modulations included).
FLUX_LORA_PATTERNS = {
    "cross-attn": {"denoiser": rf"\.{_JOINT_ATTN}$", "text_encoder": _CLIP_ATTN},
    "attn": {"denoiser": rf"\.({_JOINT_ATTN}|{_SINGLE_ATTN})$", "text_encoder": _CLIP_ATTN},
    "full": {
        "denoiser": rf"\.({_JOINT_ATTN}|{_SINGLE_ATTN}|{_DOUBLE_REST}|{_SINGLE_REST})$",
        "text_encoder": r"\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$",
    },
}
GUIDANCE_SCALE = 3.5  # Flux-dev's distilled guidance while training (sd-scripts' and diffusers' default)
_BFL_DOUBLE = re.compile(r"(^|\.)double_blocks\.\d+\.img_attn\.qkv\.weight$")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H/2 * W/2, 4C]``: 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, packed = tokens.shape
    c = packed // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """RoPE ids ``(0, row, col)`` of each packed token (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


class FluxFamily(FlowMatchingFamily):
    id = "flux"
    transformer_class_name = "FluxTransformer2DModel"
    hub_id = "black-forest-labs/FLUX.1-dev"
    display_name = "Flux.1"
    default_resolution = 1024
    text_encoders = (("text_encoder", "tokenizer"),)  # CLIP-L (kohya lora_te1); T5 stays frozen
    t5 = ("text_encoder_2", "tokenizer_2")
    frozen_encoders = ("text_encoder_2",)
    t5_max_length = 512
    full_size = "flux1-dev"
    lora_patterns = FLUX_LORA_PATTERNS
    modelspec_id = "flux-1-dev"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    base_model_version = "flux1"
    default_guidance = GUIDANCE_SCALE  # dev's distilled guidance, FluxPipeline's default (schnell ignores it)

    @property
    def pipeline_class(self) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    def matches(self, components: dict[str, Any]) -> bool:
        from diffusers import FluxTransformer2DModel

        return isinstance(components.get("transformer"), FluxTransformer2DModel)

    def matches_checkpoint(self, keys: set[str]) -> bool:
        """BFL's original layout (``double_blocks.N.img_attn.qkv``), bare or under ComfyUI's prefix."""
        return any(_BFL_DOUBLE.search(key) for key in keys)

    def checkpoint_model(self, keys: set[str]) -> str:
        """Which full-size model a BFL checkpoint is: dev has the guidance embedding, schnell not."""
        return (
            "flux1-dev" if any(k.endswith("guidance_in.in_layer.weight") for k in keys) else "flux1-schnell"
        )

    def is_dev(self, transformer: Any) -> bool:
        return bool(transformer.config.guidance_embeds)

    def adapter_mismatch(self, metadata: dict[str, str], components: dict[str, Any]) -> str | None:
        """schnell vs dev, from ``modelspec.architecture``: same layers and shapes, different distillations."""
        architecture = metadata.get("modelspec.architecture", "")
        made = next((v for v in ("dev", "schnell") if architecture.startswith(f"flux-1-{v}")), None)
        base = "dev" if self.is_dev(components["transformer"]) else "schnell"
        if made is None or made == base:
            return None
        embedder = "has" if base == "dev" else "lacks"
        return (
            f"made for Flux.1-{made} (its modelspec.architecture) but the base is Flux.1-{base} (it {embedder} "
            "the guidance embedder, time_text_embed.guidance_embedder / BFL's guidance_in); the two share "
            "every adapted layer's shape, so it loads, but it learnt the other model's distillation and "
            f"may look wrong: pick a Flux.1-{made} base"
        )

    def encode_text(self, components: dict[str, Any], captions: list[str], device: Any) -> TextEmbeddings:
        _, pooled = clip_embeddings(components["text_encoder"], components["tokenizer"], captions, device)
        return self.t5_hidden(components, captions, device), pooled

    def shift(self, scheduler: Any, latents: torch.Tensor) -> float | None:
        if not scheduler.config.use_dynamic_shifting:
            return None
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = scheduler.config
        tokens = latents.shape[-2] * latents.shape[-1] // 4
        return calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)

    def predict(self, denoiser: Any, batch: DenoiserInput, dtype: torch.dtype) -> torch.Tensor:
        noisy, (hidden, pooled) = batch.noisy, batch.text
        b, _c, h, w = noisy.shape
        sigma = self.sigmas(batch.scheduler, batch.timesteps, noisy).view(b)
        guidance = None
        if denoiser.config.guidance_embeds:  # dev: the distilled guidance scale is an input
            guidance = torch.full((b,), GUIDANCE_SCALE, device=noisy.device, dtype=dtype)
        out = denoiser(
            hidden_states=pack_latents(noisy).to(dtype),
            timestep=sigma.to(dtype),
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=hidden.to(dtype),
            txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=dtype),
            img_ids=image_ids(h, w, noisy.device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    def file_metadata(self, metadata: dict[str, str], components: dict[str, Any]) -> dict[str, str]:
        """sd-scripts' ids; schnell is told from dev by its missing guidance embedding; no prediction type."""
        values = super().file_metadata(metadata, components)
        if not self.is_dev(components["transformer"]):
            values["modelspec.architecture"] = "flux-1-schnell/lora"
        values.pop("modelspec.prediction_type", None)  # sd-scripts writes none for Flux
        return values

    def kohya_name(self, ref: Any, denoiser_config: Any) -> str:
        from studio.formats.flow_names import flux_kohya_name

        return flux_kohya_name(ref.component, ref.path)

    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon", guidance: bool = True) -> Any:
        """A tiny Flux pipeline (dev-like with ``guidance``, schnell-like without), same seed same weights."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextModel

        from studio.models.tiny import tiny_text_config
        from studio.models.tiny_flow import build_t5_tokenizer, seeded, tiny_flow_vae, tiny_t5
        from studio.models.tokenizer import build_tokenizer

        tokenizer, tokenizer_2 = build_tokenizer(), build_t5_tokenizer()
        transformer = seeded(
            seed, FluxTransformer2DModel,
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=guidance, axes_dims_rope=(4, 6, 6),
        )  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0 if guidance else 1.0, use_dynamic_shifting=guidance, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )  # fmt: skip
        return FluxPipeline(
            scheduler=scheduler,
            vae=seeded(seed, tiny_flow_vae, 0.3611, 0.1159),
            text_encoder=seeded(seed, CLIPTextModel, tiny_text_config(len(tokenizer))),
            tokenizer=tokenizer,
            text_encoder_2=seeded(seed, tiny_t5, len(tokenizer_2), 32),
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )


FLUX = FluxFamily()
