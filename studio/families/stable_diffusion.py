"""What SD 1.x, SD 2.x and SDXL share: a UNet trained on DDPM noise, CLIP text, kohya's names.

The family folders subclass ``StableDiffusionFamily`` and change only what differs (text
conditioning, detection, the tiny UNet). A flow-matching transformer family (SD3, Flux)
subclasses ``Family`` directly instead.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import DenoiserInput, Family, TextEmbeddings

_ATTN_PROJ = r"(to_q|to_k|to_v|to_out\.0)"
_CLIP_ATTN = r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$"

# ``cross-attn`` (default) adapts the cross-attention projections, where text meets image and
# where a style lives; ``full`` matches kohya sd-scripts' default coverage (every Linear and
# 1x1 conv inside the transformer blocks), so module counts equal sd-scripts' "create LoRA
# for ..." lines: SD 1.5 192 + 72, SDXL 722 + 264.
UNET_LORA_PATTERNS = {
    "cross-attn": {
        "denoiser": rf"\.transformer_blocks\.\d+\.attn2\.{_ATTN_PROJ}$",
        "text_encoder": _CLIP_ATTN,
    },
    "attn": {
        "denoiser": rf"\.transformer_blocks\.\d+\.attn[12]\.{_ATTN_PROJ}$",
        "text_encoder": _CLIP_ATTN,
    },
    "full": {
        "denoiser": rf"(\.transformer_blocks\.\d+\.(attn[12]\.{_ATTN_PROJ}|ff\.net\.0\.proj|ff\.net\.2)"
        r"|\.attentions\.\d+\.(proj_in|proj_out))$",
        "text_encoder": r"\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$",
    },
}


def tokenize(tokenizer: Any, captions: list[str], device: Any) -> torch.Tensor:
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)


class StableDiffusionFamily(Family):
    """SD 1.x-style behaviour: one CLIP encoder's last hidden state, epsilon or v prediction."""

    text_encoders = (("text_encoder", "tokenizer"),)
    lora_patterns = UNET_LORA_PATTERNS
    capturable = True

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def encode_text(
        self, components: dict[str, Any], captions: list[str], device: Any, clip_skip: int | None = None
    ) -> TextEmbeddings:
        return self.encode_tokens(components, self.tokenize_captions(components, captions, device), clip_skip)

    def tokenize_captions(
        self, components: dict[str, Any], captions: list[str], device: Any
    ) -> dict[str, torch.Tensor]:
        """Each text encoder's token ids: the CPU's part of ``encode_text`` (a step replayed as a
        CUDA graph runs it outside the graph)."""
        return {encoder: tokenize(components[tok], captions, device) for encoder, tok in self.text_encoders}

    def encode_tokens(
        self, components: dict[str, Any], tokens: dict[str, torch.Tensor], clip_skip: int | None = None
    ) -> TextEmbeddings:
        """The last hidden state; ``clip_skip`` N > 1: the one N layers from the end through the
        final layer norm (sd-scripts' ``get_hidden_states`` and A1111's rule; N = 1 is the last)."""
        ids, encoder = tokens["text_encoder"], components["text_encoder"]
        if not clip_skip or clip_skip == 1:
            return encoder(ids)[0], None
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        return getattr(encoder, "text_model", encoder).final_layer_norm(hidden), None

    def pipeline_clip_skip(self, clip_skip: int | None) -> int | None:
        """diffusers counts layers skipped (its 1 is A1111's "Clip skip: 2")."""
        return None if not clip_skip or clip_skip == 1 else clip_skip - 1

    def prompt_arguments(
        self, components: dict[str, Any], prompt: str, negative: str, device: Any, clip_skip: int | None
    ) -> dict[str, Any]:
        """With a clip skip, the embeddings themselves, for the prompt and the negative alike (as
        A1111 does; diffusers 0.42 skips only the prompt, and its SD 1.x path reaches for a
        ``text_model`` that transformers 5's CLIPTextModel no longer has)."""
        if self.pipeline_clip_skip(clip_skip) is None:
            return {"prompt": prompt, "negative_prompt": negative or None}
        with torch.no_grad():
            embeds = [
                self.encode_text(components, [text], device, clip_skip)[0] for text in (prompt, negative)
            ]
        return {"prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}

    def training_scheduler(self, pipeline: Any) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipeline.scheduler.config)

    def sample_timesteps(self, scheduler: Any, batch: int, generator: torch.Generator) -> torch.Tensor:
        from studio.training.loss import sample_timesteps

        return sample_timesteps(batch, scheduler.config.num_train_timesteps, generator)

    def noisy_latents(self, scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> torch.Tensor:
        return scheduler.add_noise(latents, noise, timesteps)

    def training_target(self, scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> torch.Tensor:
        from studio.training.loss import diffusion_target

        return diffusion_target(scheduler, latents, noise, timesteps)

    def training_loss(
        self, prediction: Any, target: Any, timesteps: Any, scheduler: Any, min_snr_gamma: float | None
    ) -> torch.Tensor:
        from studio.training.loss import diffusion_loss

        return diffusion_loss(prediction, target, timesteps, scheduler, min_snr_gamma)

    def added_conditioning(self, batch: DenoiserInput, dtype: torch.dtype) -> dict[str, Any] | None:
        """Extra UNet inputs besides the text's hidden states (none before SDXL)."""
        return None

    def host_conditioning(self, batch: DenoiserInput) -> dict[str, torch.Tensor]:
        """The denoiser's inputs made from Python numbers, not tensors (none before SDXL): a step
        replayed as a CUDA graph makes them outside the graph (``DenoiserInput.conditioning``)."""
        return {}

    def predict(self, denoiser: Any, batch: DenoiserInput, dtype: torch.dtype) -> torch.Tensor:
        hidden = batch.text[0].to(dtype)
        added = self.added_conditioning(batch, dtype)
        return denoiser(batch.noisy, batch.timesteps, hidden, added_cond_kwargs=added, return_dict=False)[0]

    def kohya_name(self, ref: Any, denoiser_config: Any) -> str:
        from studio.formats.kohya_names import kohya_name

        return kohya_name(ref, self.adapter_family, denoiser_config)

    def modelspec_architecture(self, prediction_type: str) -> str:
        from studio.formats.metadata import modelspec_architecture

        return modelspec_architecture(self.adapter_family, prediction_type)

    def layer_group(self, component: str, path: str) -> tuple[str, str | None] | None:
        from studio.mixer.blend import unet_block

        return unet_block(path) if component == self.denoiser else None


def is_unet_pipeline(components: dict[str, Any]) -> bool:
    return components.get("unet") is not None and hasattr(components["unet"], "config")
