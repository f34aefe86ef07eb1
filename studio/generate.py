"""Make images from a base plus a blend, and stamp each PNG with how to make it again.

Every PNG carries two text chunks: ``parameters``, the A1111 infotext other tools read
(prompt with ``<lora:name:weight>`` tags, "Negative prompt:", "Steps: ..., Sampler: ...");
and ``studio_recipe``, the full JSON recipe (block weights included, which infotext cannot
express). Image i of a batch uses seed + i on its own ``torch.Generator``, so each image
can be made again alone from its recorded seed.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import nn

from studio.adapters import Adapter, load_adapter
from studio.atomic import atomic_path
from studio.compile_blocks import compile_blocks, uncompile_blocks
from studio.compile_cache import use_persistent_compile_cache
from studio.errors import StudioError
from studio.families import Family, detect_family, get_family
from studio.inference_graphs import GraphedForward, graph_blocker, replay_forward
from studio.mixer import AdapterWeights, BlendEngine, BlendItem, PatchStats
from studio.recipes import PNG_KEY, GenerationSettings, Recipe, recipe_for

# name -> (scheduler class, overrides of the base config, A1111 sampler name)
SCHEDULERS: dict[str, tuple[type, dict[str, Any], str]] = {
    "euler-a": (EulerAncestralDiscreteScheduler, {}, "Euler a"),
    "dpm++2m-karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "ddim": (DDIMScheduler, {}, "DDIM"),
    "unipc": (UniPCMultistepScheduler, {"use_karras_sigmas": False}, "UniPC"),
    # SD3.5 / Flux: the pipeline's own sampler; its config carries the shift (Flux-dev: dynamic).
    "flow-euler": (FlowMatchEulerDiscreteScheduler, {}, "Euler"),
}


def make_scheduler(name: str, base_config: Any):
    """A scheduler of kind ``name`` built from the base's own scheduler config (betas, offsets)."""
    if name not in SCHEDULERS:
        raise StudioError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides, _ = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)


def _number(value: float) -> str:
    return f"{value:g}"


def lora_tags(recipe: Recipe) -> str:
    """``<lora:name:w>``, or ``<lora:name:te:unet>`` when the two strengths differ (A1111 syntax);
    a LoRA Block Weight vector or preset follows as ``:lbw=…``, as that extension reads it."""
    tags = []
    for entry in recipe.adapters:
        w = entry.weights
        te, unet = w.weight * w.text_encoder, w.weight * w.unet
        if not w.enabled or (te == 0 and unet == 0):
            continue
        strengths = _number(unet) if te == unet else f"{_number(te)}:{_number(unet)}"
        tags.append(f"<lora:{entry.name}:{strengths}{f':lbw={w.lbw}' if w.lbw else ''}>")
    return " ".join(tags)


def a1111_fields(parameters: str) -> dict[str, str]:
    """The ``Key: value`` pairs of an A1111 infotext's last line ("Steps: 25, ..., Clip skip: 2")."""
    last = parameters.strip().splitlines()[-1] if parameters.strip() else ""
    fields = {}
    for part in last.split(", "):
        key, sep, value = part.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def a1111_parameters(recipe: Recipe) -> str:
    s = recipe.settings
    prompt = " ".join(part for part in (s.prompt, lora_tags(recipe)) if part)
    lines = [prompt]
    if s.negative:
        lines.append(f"Negative prompt: {s.negative}")
    fields = {
        "Steps": s.steps,
        "Sampler": SCHEDULERS[s.scheduler][2],
        "CFG scale": _number(s.guidance),
        "Seed": s.seed,
        "Size": f"{s.width}x{s.height}",
        "Model": Path(recipe.base).name or recipe.base,
    }
    if s.clip_skip is not None:
        fields["Clip skip"] = s.clip_skip
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
    return "\n".join(lines)


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    recipe: Recipe
    parameters: str

    def save(self, path: str | Path) -> Path:
        """Write a PNG with ``parameters`` and ``studio_recipe`` text chunks (atomically)."""
        path = Path(path)
        info = PngInfo()
        info.add_text("parameters", self.parameters)
        info.add_text(PNG_KEY, self.recipe.to_json())
        with atomic_path(path) as tmp:
            self.image.save(tmp, format="PNG", pnginfo=info)
        return path


def _check(settings: GenerationSettings) -> None:
    problems = []
    if settings.steps < 1:
        problems.append(f"steps must be at least 1, got {settings.steps}")
    if settings.batch < 1:
        problems.append(f"batch must be at least 1, got {settings.batch}")
    if not 0 <= settings.seed < 2**63:
        problems.append(f"seed must be between 0 and 2^63-1, got {settings.seed}")
    if not math.isfinite(settings.guidance):
        problems.append(f"guidance must be a finite number, got {settings.guidance}")
    for label, value in (("width", settings.width), ("height", settings.height)):
        if value is not None and (value < 8 or value % 8):
            problems.append(f"{label} must be a positive multiple of 8, got {value}")
    if problems:
        raise StudioError("; ".join(problems))


INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


@dataclass(frozen=True)
class FastPath:
    """Switches of the fast generation path; all off (the default) is the plain eager path.

    SD 1.5 at 512² on a large GPU spends its time in Python launching small kernels, not in
    them: compiling the UNet with CUDA graphs ("reduce-overhead") removes that. Slider
    changes need no recompilation: the blend engine rewrites weights in place, compiled
    graphs take the parameters as inputs (never as constants: inductor's ``freezing`` is
    refused) and CUDA graphs read them at their unchanged addresses. A new size, batch or
    scheduler compiles once more (past torch._dynamo's recompile limit, such a shape runs eager).
    ``graphs`` gets most of that with no compiler: the eager UNet and VAE decoder captured as
    CUDA graphs (studio/inference_graphs.py), in two forwards rather than a minute.
    """

    compile: str | None = None  # torch.compile mode of the UNet, one of INDUCTOR_MODES; None: eager
    backend: str = "inductor"  # any other torch.compile backend ("cudagraphs", "aot_eager") takes no mode
    channels_last: bool = False  # UNet convolution weights in NHWC, the layout fp16 conv kernels prefer
    graphs: bool = False  # replay the eager UNet and VAE decoder as CUDA graphs (a CUDA device only)
    compile_blocks: bool = False  # inductor on their repeated blocks (studio/compile_blocks.py)

    @classmethod
    def choose(cls, compile: str | None, graphs: bool = True) -> FastPath:
        """The CLI's and the app's path: compiled when asked, else graph replay unless refused."""
        if compile:
            return cls.parse(compile)
        return DEFAULT if graphs else PLAIN

    @classmethod
    def parse(cls, spec: str, channels_last: bool = True) -> FastPath:
        """``"reduce-overhead"`` (an inductor mode), a backend name such as ``"cudagraphs"``, or
        ``"blocks"``: the repeated blocks compiled inside the replayed graphs (seconds to compile
        on a warm cache, where the whole UNet takes a minute)."""
        if spec == "blocks":
            return cls(graphs=True, compile_blocks=True, channels_last=channels_last)
        if spec in INDUCTOR_MODES:
            return cls(compile=spec, channels_last=channels_last)
        if spec in torch.compiler.list_backends(exclude_tags=()):
            return cls(compile="default", backend=spec, channels_last=channels_last)
        raise StudioError(
            f"unknown compile mode {spec!r}; choose blocks or one of {', '.join(INDUCTOR_MODES)}"
        )


PLAIN = FastPath()  # the plain eager path, every switch off
DEFAULT = FastPath(graphs=True)  # what a user gets: eager kernels, replayed as graphs on a GPU


def _compile_unet(unet: nn.Module, fast: FastPath) -> Any:
    """The compiled forward, set on the instance so that deleting it gives the eager one back."""
    from torch._inductor import config as inductor

    if fast.backend == "inductor" and inductor.freezing:
        raise StudioError(
            "inductor's freezing (TORCHINDUCTOR_FREEZING) makes the weights constants of the compiled "
            "UNet, so slider changes would not show; unset it to compile"
        )
    use_persistent_compile_cache()
    mode = fast.compile if fast.backend == "inductor" else None
    compiled = torch.compile(unet.forward, backend=fast.backend, mode=mode, dynamic=False)
    unet.forward = compiled
    return compiled


def _graph_thread() -> None:
    """Give our runner thread the thread-local state of CUDA graph trees.

    torch sets it up only in the thread that first imported them (and in autograd's threads);
    any other thread fails an assertion at its first replay (seen on an H100, torch 2.11).
    The same four lines as torch's module set-up, which older versions do not expose.
    """
    from torch._inductor import cudagraph_trees

    local = cudagraph_trees.local
    if not hasattr(local, "tree_manager_containers"):
        local.tree_manager_containers = {}
        local.tree_manager_locks = defaultdict(threading.Lock)
        torch._C._stash_obj_in_tls("tree_manager_containers", local.tree_manager_containers)
        torch._C._stash_obj_in_tls("tree_manager_locks", local.tree_manager_locks)


class GenerationSession:
    """A base pipeline with a blend patched into its weights; every image records both."""

    def __init__(
        self,
        pipeline: Any,
        base: str,
        family: Family | str | None = None,
        *,
        cache_bytes: int | None = None,
        fast: FastPath = PLAIN,
    ):
        self.pipeline = pipeline
        self.base = base
        self.model_family = get_family(family) if family else detect_family(pipeline.components)
        # What adapter files are checked against (and baked as): a variant loads its parent's files.
        self.family = self.model_family.adapter_family
        self.engine = BlendEngine.for_pipeline(pipeline, cache_bytes=cache_bytes)
        self.items: list[BlendItem] = []
        self._scheduler_config = pipeline.scheduler.config
        self.fast = fast
        self.denoiser = pipeline.components[self.model_family.denoiser]
        self._compiled = _compile_unet(self.denoiser, fast) if fast.compile else None
        if fast.compile_blocks:
            for module in self._image_modules:
                compile_blocks(module)
        self.graphs = self._replay_as_graphs() if fast.graphs and not fast.compile else []
        if fast.channels_last:
            for module in self._image_modules:
                module.to(memory_format=torch.channels_last)
        # CUDA graph trees are kept per thread: a thread of its own keeps one set of graphs
        # whichever thread (a web server's pool) asks for the image.
        self._runner = ThreadPoolExecutor(1, "studio-generate", _graph_thread) if fast.compile else None

    @property
    def _image_modules(self) -> list[nn.Module]:
        """The denoiser and VAE decoder: nearly all of an image's GPU time, what the switches speed up."""
        return [self.denoiser, self.pipeline.vae.decoder]

    def _replay_as_graphs(self) -> list[GraphedForward]:
        """The denoiser and VAE decoder replayed as CUDA graphs, where they can be (else none)."""
        if graph_blocker(self.denoiser, self.model_family.capturable):
            return []
        pool = torch.cuda.graph_pool_handle()
        return [replay_forward(module, pool) for module in self._image_modules]

    def add_adapter(
        self,
        path: str | Path,
        weights: AdapterWeights | None = None,
        *,
        name: str | None = None,
        strict: bool = False,
    ) -> Adapter:
        """Load an adapter file against this base and patch it in at ``weights`` (default: 1)."""
        adapter = load_adapter(path, self.pipeline.components, self.family, name=name, strict=strict)
        if any(item.adapter.name == adapter.name for item in self.items):
            raise StudioError(f"an adapter named {adapter.name!r} is already in the blend", path=path)
        self.set_blend([*self.items, BlendItem(adapter, weights or AdapterWeights())])
        return adapter

    def set_blend(self, items: list[BlendItem]) -> PatchStats:
        self.items = list(items)
        return self.engine.set_blend(self.items)

    def set_weights(self, name: str, weights: AdapterWeights) -> PatchStats:
        """A slider change: re-patches only the layers of adapter ``name``."""
        if name not in {item.adapter.name for item in self.items}:
            raise StudioError(f"no adapter named {name!r} in the blend")
        return self.set_blend(
            [replace(i, weights=weights) if i.adapter.name == name else i for i in self.items]
        )

    def native_size(self) -> tuple[int, int]:
        """The size the denoiser was built for, in pixels (the pipeline's default where the
        denoiser's config has none, as Flux's)."""
        side = getattr(self.denoiser.config, "sample_size", None) or self.pipeline.default_sample_size
        size = side * self.pipeline.vae_scale_factor
        return size, size

    def sampler(self, name: str) -> str:
        """``name`` if it samples this family, else the family's own (a flow model has one sampler)."""
        samplers = self.model_family.samplers
        return name if name in samplers else samplers[0]

    def trained_clip_skip(self) -> int | None:
        """The clip skip the enabled adapters were trained with (the first that says one); None
        for a family without one (a flow model's file may still carry sd-scripts' ``ss_clip_skip``)."""
        if "clip_skip" in self.model_family.unsupported_options:
            return None
        for item in self.items:
            if item.weights.enabled and item.adapter.info.clip_skip is not None:
                return item.adapter.info.clip_skip
        return None

    def generate(self, settings: GenerationSettings) -> list[GeneratedImage]:
        _check(settings)
        native_w, native_h = self.native_size()
        settings = replace(
            settings,
            width=settings.width or native_w,
            height=settings.height or native_h,
            clip_skip=settings.clip_skip if settings.clip_skip is not None else self.trained_clip_skip(),
            scheduler=self.sampler(settings.scheduler),
        )

        scheduler = make_scheduler(settings.scheduler, self._scheduler_config)
        device = self.pipeline.device
        generators = [
            torch.Generator(device=device).manual_seed(settings.seed + i) for i in range(settings.batch)
        ]
        original = self.pipeline.scheduler
        self.pipeline.scheduler = scheduler
        try:
            call = partial(
                self.pipeline,
                **self.model_family.prompt_arguments(
                    self.pipeline.components, settings.prompt, settings.negative, device, settings.clip_skip
                ),
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                width=settings.width,
                height=settings.height,
                num_images_per_prompt=settings.batch,
                generator=generators,
            )
            output = self._runner.submit(call).result() if self._runner else call()
        finally:
            self.pipeline.scheduler = original
        results = []
        for i, image in enumerate(output.images):
            recipe = recipe_for(self.base, self.items, replace(settings, seed=settings.seed + i, batch=1))
            results.append(GeneratedImage(image, recipe, a1111_parameters(recipe)))
        return results

    def close(self) -> None:
        """Give the base back unpatched (bit-exact), eager and in its own memory layout."""
        self.engine.restore()
        self.items = []
        unet = self.denoiser
        if self._compiled is not None and vars(unet).get("forward") is self._compiled:
            del unet.forward
        if self._runner:
            if self.fast.compile == "reduce-overhead":
                from torch._inductor.cudagraph_trees import reset_cudagraph_trees

                # Free this thread's CUDA graphs and their memory pool now, not whenever the
                # garbage collector reaches the thread.
                self._runner.submit(reset_cudagraph_trees).result()
            self._runner.shutdown()
        if self.fast.channels_last:
            for module in self._image_modules:
                module.to(memory_format=torch.contiguous_format)
        if self.fast.compile_blocks:
            for module in self._image_modules:
                uncompile_blocks(module)
        for graphed in self.graphs:
            if vars(graphed.module).get("forward") is graphed:
                del graphed.module.forward
        self.graphs = []
