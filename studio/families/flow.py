"""What SD3.x and Flux.1 share: a transformer trained on the rectified-flow (flow-matching) objective.

Training, as in the SD3 paper and diffusers' SD3/Flux LoRA examples: a point on the straight
path between data and noise, ``x_t = (1 - σ)·x0 + σ·ε``, with ``σ`` drawn logit-normally
(``compute_density_for_timestep_sampling``) and then shifted toward noise (SD3: the
scheduler's fixed ``shift``; Flux-dev: the resolution-dependent shift its pipeline uses at
inference), and the denoiser predicts the velocity ``ε - x0`` under a plain MSE.
``sample_timesteps`` draws the unshifted ``u`` (as ``1000·u``); the shift needs the latent size,
so ``sigmas`` applies it wherever the step needs ``σ``. T5 is never adapted: ``text_encoders``
lists only the CLIP encoders, and ``encode_text`` runs T5 without grad.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

import torch

from studio.errors import StudioError
from studio.families.base import Family

LOGIT_MEAN, LOGIT_STD = 0.0, 1.0  # the SD3 paper's logit-normal(0, 1), diffusers' defaults


def clip_embeddings(
    encoder: Any, tokenizer: Any, captions: list[str], device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(penultimate hidden states, pooled)`` of a CLIP text encoder, padded to 77 tokens."""
    from studio.families.stable_diffusion import tokenize

    out = encoder(tokenize(tokenizer, captions, device), output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return out.hidden_states[-2], pooled


@torch.no_grad()
def t5_embeddings(
    encoder: Any, tokenizer: Any, captions: list[str], device: Any, max_length: int
) -> torch.Tensor:
    """T5's last hidden states (frozen, never trained), padded as the pipelines pad them."""
    length = min(tokenizer.model_max_length, max_length)
    ids = tokenizer(
        captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids
    return encoder(ids.to(device))[0]


class FlowMatchingFamily(Family):
    """A flow-matching transformer family (``denoiser = "transformer"``)."""

    denoiser = "transformer"
    # DDPM-schedule and CLIP-layer switches: a flow-matching model has neither.
    unsupported_options = ("clip_skip", "v_prediction", "zero_terminal_snr", "min_snr_gamma")
    t5: ClassVar[tuple[str, str]]  # (encoder, tokenizer) attributes of T5, frozen
    t5_max_length: ClassVar[int]  # the pipeline's default ``max_sequence_length``
    # Generation: the pipeline's own flow-matching Euler, from its scheduler config (SD3's fixed
    # ``shift``, Flux-dev's resolution-dependent one); DDPM samplers do not apply.
    samplers = ("flow-euler",)
    transformer_class_name: ClassVar[str]  # the diffusers model class of the transformer
    hub_id: ClassVar[str]  # where its diffusers configs live, for the hint of a transformer-only file

    def load_single_file(self, path: Path, **kwargs: Any) -> Any:
        """BFL's and SAI's files mostly hold the transformer alone (``flux1-dev.safetensors``): it
        comes from the file, the rest (text encoders, tokenizers, VAE, scheduler) from ``config``,
        a diffusers folder or hub id of the same model. A file with a VAE in it is a whole pipeline
        for diffusers' own single-file loader."""
        import diffusers

        from studio.errors import StudioError
        from studio.formats.safetensors_io import read_header

        if any(key.startswith(("vae.", "first_stage_model.")) for key in read_header(path).tensors):
            return super().load_single_file(path, **kwargs)
        config = kwargs.pop("config", None)
        if config is None:
            raise StudioError(
                f"this {self.display_name} file holds the transformer only",
                path=path,
                hint=f"pass --base-config with a diffusers folder or hub id of the model (e.g. {self.hub_id}) "
                "for its text encoders and VAE",
            )
        transformer_class = getattr(diffusers, self.transformer_class_name)
        transformer = transformer_class.from_single_file(
            str(path), config=config, subfolder="transformer", **kwargs
        )
        return self.pipeline_class.from_pretrained(config, transformer=transformer, **kwargs)

    def prompt_arguments(
        self, components: dict[str, Any], prompt: str, negative: str, device: Any, clip_skip: int | None
    ) -> dict[str, Any]:
        """Prompt and negative prompt; A1111's clip skip is an SD notion, refused in one line."""
        if clip_skip is not None:
            raise StudioError(f"--clip-skip does not apply to {self.display_name}", hint="leave it unset")
        return {"prompt": prompt, "negative_prompt": negative or None}

    def training_scheduler(self, pipeline: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)

    def sample_timesteps(self, scheduler: Any, batch: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(
            "logit_normal", batch, logit_mean=LOGIT_MEAN, logit_std=LOGIT_STD, generator=generator
        )
        return u * scheduler.config.num_train_timesteps

    def shift(self, scheduler: Any, latents: torch.Tensor) -> float | None:
        """``mu`` of the exponential time shift for these latents, or None for the fixed ``shift``."""
        return None

    def sigmas(self, scheduler: Any, timesteps: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Shifted ``σ`` in (0, 1) per sample, shaped to broadcast over ``latents``."""
        u = (timesteps.float() / scheduler.config.num_train_timesteps).clamp(1e-5, 1 - 1e-5)
        mu = self.shift(scheduler, latents)
        if mu is None:
            s = scheduler.config.shift
            sigma = s * u / (1 + (s - 1) * u)
        else:
            sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))
        return sigma.to(latents.device).view(-1, *([1] * (latents.dim() - 1)))

    def noisy_latents(self, scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> torch.Tensor:
        sigma = self.sigmas(scheduler, timesteps, latents)
        return ((1 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)

    def training_target(self, scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> torch.Tensor:
        return noise - latents

    def training_loss(
        self, prediction: Any, target: Any, timesteps: Any, scheduler: Any, min_snr_gamma: float | None
    ) -> torch.Tensor:
        """Plain MSE: logit-normal sampling already weighs the timesteps (min-SNR is a DDPM notion)."""
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def t5_hidden(self, components: dict[str, Any], captions: list[str], device: Any) -> torch.Tensor:
        encoder, tokenizer = (components[name] for name in self.t5)
        return t5_embeddings(encoder, tokenizer, captions, device, self.t5_max_length)

    # -- adapter files ----------------------------------------------------------------------

    modelspec_id: ClassVar[str]  # sd-scripts' sai_model_spec architecture id
    modelspec_implementation: ClassVar[str]
    base_model_version: ClassVar[str]  # sd-scripts' ss_base_model_version

    def modelspec_architecture(self, prediction_type: str) -> str:
        return f"{self.modelspec_id}/lora"

    def file_metadata(self, metadata: dict[str, str], components: dict[str, Any]) -> dict[str, str]:
        """The SD-family metadata with this family's ids, as sd-scripts writes them."""
        return {
            **metadata,
            "ss_base_model_version": self.base_model_version,
            "modelspec.architecture": self.modelspec_architecture(""),
            "modelspec.implementation": self.modelspec_implementation,
        }

    def save_kohya_file(
        self,
        path: Any,
        lora: dict[Any, Any],
        components: dict[str, Any],
        metadata: dict[str, str],
        **options: Any,
    ) -> Any:
        from studio.formats.flow_lora import save_flow_kohya

        return save_flow_kohya(
            path, lora, components, self, self.file_metadata(metadata, components), **options
        )

    def save_diffusers_file(
        self, path: Any, lora: dict[Any, Any], components: dict[str, Any], metadata: dict[str, str]
    ) -> Any:
        from studio.formats.diffusers_format import save_diffusers_lora

        return save_diffusers_lora(path, lora, components, self, self.file_metadata(metadata, components))

    def layer_group(self, component: str, path: str) -> tuple[str, str | None] | None:
        """Mixer blocks: ``("double", "double.N")`` / ``("single", "single.N")`` per transformer block."""
        if component != self.denoiser:
            return None
        if m := re.match(r"(single_)?transformer_blocks\.(\d+)\.", path):
            kind = "single" if m[1] else "double"
            return kind, f"{kind}.{m[2]}"
        return None
