"""The one interface a model family implements: what the studio knows about a base architecture.

A family answers, for one kind of base model: is this it (from loaded components, or from
a single-file checkpoint's keys), how to load or build one, how captions become
conditioning, what the denoiser is trained to predict and with which loss, which layers a
LoRA adapts per layer set, how adapter files name layers, how the mixer groups layers, and
which pipeline generates images. The trainer, the loader and the mixer ask the family
instead of branching on its name, so adding a family is adding a folder under
``studio/families`` (or calling ``studio.families.register`` from outside).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from studio.formats.kohya_names import ModuleRef

PRESETS = ("cross-attn", "attn", "full")  # the layer sets a LoRA can adapt (``--preset``)

TextEmbeddings = tuple["torch.Tensor", "torch.Tensor | None"]  # (hidden states, pooled or None)


@dataclass
class DenoiserInput:
    """One training batch as the denoiser sees it (everything on the device)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    text: TextEmbeddings
    original_sizes: list[tuple[int, int]]  # (h, w) of each image before resizing
    crops: list[tuple[int, int]]  # (y, x) of each crop's top-left corner
    target_size: tuple[int, int]  # (h, w) in pixels of the batch's bucket
    scheduler: Any = None  # the training schedule (flow families shift σ by its config)
    # ``host_conditioning``'s tensors, made ahead: a step replayed as a CUDA graph makes them
    # outside the graph (SDXL's time ids come from Python numbers) and passes its copies in.
    conditioning: dict[str, torch.Tensor] | None = None


class Family(ABC):
    """A base-model family. One instance per family, registered by ``id``."""

    id: ClassVar[str]  # registry key, written nowhere else ("sd1")
    display_name: ClassVar[str]  # for people ("SD 1.x")
    default_resolution: ClassVar[int]  # training and generation side in pixels
    text_encoders: ClassVar[tuple[tuple[str, str], ...]]  # (encoder, tokenizer) attribute names, kohya order
    denoiser: ClassVar[str] = "unet"  # pipeline attribute of the network the LoRA mostly adapts
    frozen_encoders: ClassVar[
        tuple[str, ...]
    ] = ()  # text encoders that never train (T5), moved with the rest
    full_size: ClassVar[str | None] = (
        None  # a ``build_meta_components`` name (``FULL_SIZE``, ``FLOW_FULL_SIZE``)
    )
    lora_patterns: ClassVar[dict[str, dict[str, str]]]  # preset -> {"denoiser"/"text_encoder": regex}
    # TrainConfig fields that mean nothing for this family: set, they are refused in one line.
    unsupported_options: ClassVar[tuple[str, ...]] = ()
    # ``studio.generate.SCHEDULERS`` names that sample this family, its default first.
    samplers: ClassVar[tuple[str, ...]] = ("euler-a", "dpm++2m-karras", "ddim", "unipc")
    default_guidance: ClassVar[float] = 7.0  # ``studio generate``'s guidance scale when none is given
    # Given ``tokenize_captions``' ids and ``host_conditioning``'s tensors, ``encode_tokens`` and
    # ``predict`` launch only device work: a training step can be captured and replayed as a
    # CUDA graph (studio/training/graph_step.py).
    capturable: ClassVar[bool] = False

    # -- identity ---------------------------------------------------------------------------

    @property
    def value(self) -> str:
        """The id, under the name the old ``ModelFamily`` enum gave it."""
        return self.id

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(encoder for encoder, _ in self.text_encoders)

    @property
    def adapter_family(self) -> Family:
        """The family whose adapter-file conventions (kohya names, metadata ids) this one writes.

        Itself, except for a variant of another family (an SD 1.x variant writes SD 1.x files,
        since other tools know no more than that).
        """
        return self

    def __repr__(self) -> str:
        return f"<family {self.id}>"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        from studio.families import get_family

        return get_family, (self.id,)  # one object per family, in every process

    # -- detection and loading --------------------------------------------------------------

    @abstractmethod
    def matches(self, components: dict[str, Any]) -> bool:
        """Whether loaded pipeline components are of this family (checked newest family first)."""

    def matches_checkpoint(self, keys: set[str]) -> bool:
        """Whether a single-file (original layout) checkpoint with these tensor keys is of this family."""
        return False

    @property
    @abstractmethod
    def pipeline_class(self) -> type:
        """The diffusers pipeline that generates images with a base of this family."""

    def load_single_file(self, path: Path, **kwargs: Any) -> Any:
        return self.pipeline_class.from_single_file(str(path), **kwargs)

    @abstractmethod
    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon") -> Any:
        """A tiny randomly initialised pipeline of this family (tests and the offline default)."""

    # -- training ---------------------------------------------------------------------------

    @abstractmethod
    def encode_text(
        self, components: dict[str, Any], captions: list[str], device: Any, clip_skip: int | None = None
    ) -> TextEmbeddings:
        """Captions -> ``(hidden states, pooled)``; the text encoders run with grad if they train.
        ``clip_skip``: the hidden state that many layers from the end (None: the family's own)."""

    def pipeline_clip_skip(self, clip_skip: int | None) -> int | None:
        """``clip_skip`` as the family's diffusers pipeline counts it (None: its default)."""
        return clip_skip

    def prompt_arguments(
        self, components: dict[str, Any], prompt: str, negative: str, device: Any, clip_skip: int | None
    ) -> dict[str, Any]:
        """The pipeline's prompt arguments with ``clip_skip`` (A1111's count) applied."""
        skip = self.pipeline_clip_skip(clip_skip)
        return {
            "prompt": prompt,
            "negative_prompt": negative or None,
            **({} if skip is None else {"clip_skip": skip}),
        }

    @abstractmethod
    def training_scheduler(self, pipeline: Any) -> Any:
        """The noise schedule training draws from (built from the base's own scheduler config)."""

    @abstractmethod
    def sample_timesteps(self, scheduler: Any, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps on the CPU, drawn from ``generator`` (resumable)."""

    @abstractmethod
    def noisy_latents(self, scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> torch.Tensor: ...

    @abstractmethod
    def training_target(self, scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> torch.Tensor:
        """What the denoiser should output (noise, velocity, flow...)."""

    @abstractmethod
    def training_loss(
        self, prediction: Any, target: Any, timesteps: Any, scheduler: Any, min_snr_gamma: float | None
    ) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, denoiser: Any, batch: DenoiserInput, dtype: torch.dtype) -> torch.Tensor:
        """One denoiser call with this family's conditioning (SDXL: pooled text and size ids)."""

    # -- LoRA -------------------------------------------------------------------------------

    def lora_targets(
        self, components: dict[str, Any], preset: str, train_text_encoder: bool = True
    ) -> dict[str, list[str]]:
        """``{component: [module paths]}`` the preset adapts (every Linear/Conv2d a regex matches)."""
        if preset not in self.lora_patterns:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(self.lora_patterns)}")
        patterns = self.lora_patterns[preset]
        targets = {self.denoiser: matching_layers(components[self.denoiser], patterns["denoiser"])}
        for name in self.text_encoder_names if train_text_encoder else ():
            targets[name] = matching_layers(components[name], patterns["text_encoder"])
        return targets

    # -- adapter files and the mixer --------------------------------------------------------

    @abstractmethod
    def kohya_name(self, ref: ModuleRef, denoiser_config: Any) -> str:
        """The module name a kohya file gives this layer."""

    @abstractmethod
    def modelspec_architecture(self, prediction_type: str) -> str:
        """``modelspec.architecture`` of this family's LoRA files."""

    def adapter_mismatch(self, metadata: dict[str, str], components: dict[str, Any]) -> str | None:
        """Why an adapter of this family may not suit this base though its shapes fit (a
        variant its header names, as Flux schnell vs dev), or None. A warning, not a refusal."""
        return None

    @abstractmethod
    def layer_group(self, component: str, path: str) -> tuple[str, str | None] | None:
        """The mixer's block of a layer: ``("down", "down.1")``, ``("mid", None)``, or None (no block)."""

    def save_kohya_file(
        self,
        path: Path,
        lora: dict[Any, Any],
        components: dict[str, Any],
        metadata: dict[str, str],
        **options: Any,
    ) -> Path:
        """Write an adapter of this family as a kohya file (the flow families write fused layouts);
        ``options``: the writer's keywords (``dtype``)."""
        from studio.formats.kohya import save_kohya

        return save_kohya(path, lora, components, self, metadata, **options)

    def save_diffusers_file(
        self, path: Path, lora: dict[Any, Any], components: dict[str, Any], metadata: dict[str, str]
    ) -> Path:
        """Write an adapter of this family as a diffusers/peft file."""
        from studio.formats.diffusers_format import save_diffusers_lora

        return save_diffusers_lora(path, lora, components, self, metadata)


def matching_layers(model: Any, pattern: str) -> list[str]:
    """Paths of the Linear and Conv2d layers of ``model`` whose ``"." + path`` the regex matches."""
    from torch import nn

    regex = re.compile(pattern)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and regex.search("." + name)
    ]
