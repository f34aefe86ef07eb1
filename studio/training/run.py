"""Set-up of a training run: everything the step and the hooks share, built once, in one object.

``setup_run`` reads top to bottom as the run's preparation: devices and precision, data,
the base with its LoRA attached, optimizer and schedule, resume, caches. The resulting
``TrainRun`` holds the models, optimizer, caches and position (``state``); the step
(``studio/training/step.py``) and the hooks (``studio/training/hooks.py``) read and advance it.
Everything model-specific is asked of ``run.family``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.training_utils import cast_training_params

from studio.config import TrainConfig
from studio.data import DatasetConfig, ScannedDataset, epoch_batches, expand_samples, load_training_image
from studio.data.masks import load_mask
from studio.errors import StudioError
from studio.families import Family
from studio.lora.inject import extract_lora, inject_network, set_input_casts
from studio.lora.networks import NetworkSpec
from studio.models.loader import BaseModel, load_base
from studio.training.checkpoint import (
    TrainingState,
    checkpoint_adapter_name,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from studio.training.data_parallel import broadcast_parameters
from studio.training.encoding import ContentCache, encode_latents
from studio.training.export import export_adapter
from studio.training.fp8 import store_in_fp8
from studio.training.loss import latent_mask
from studio.training.metrics import trim_metrics
from studio.training.optim import build_lr_scheduler, build_optimizer, check_optimizer_package, optimizer_mode
from studio.training.prediction import base_as_trained, noise_schedule
from studio.training.progress import progress


@dataclass
class TrainRun:
    """One run in progress: its models, optimizer, caches, schedule and position."""

    config: TrainConfig
    accelerator: Accelerator
    weight_dtype: torch.dtype
    base: BaseModel
    data_config: DatasetConfig
    dataset: ScannedDataset
    resolution: int
    trainable: dict[str, torch.nn.Module]  # component -> model with LoRA parameters
    samples: list[int] = field(default_factory=list)  # item index per (image, repeat)
    models: dict[str, Any] = field(default_factory=dict)  # the same, prepared (and maybe compiled)
    params: list[torch.nn.Parameter] = field(default_factory=list)
    optimizer: Any = None
    lr_scheduler: Any = None
    noise_scheduler: Any = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    state: TrainingState = field(default_factory=lambda: TrainingState(0, 0, []))
    global_batch: int = 1  # samples per micro-step over all processes
    batches_per_epoch: int = 1
    steps_per_epoch: int = 1
    total_steps: int = 0
    latent_cache: ContentCache | None = None
    text_cache: ContentCache | None = None
    parked: list[str] = field(default_factory=list)  # components waiting on the CPU (low memory)
    started: float = field(default_factory=time.time)
    ema: Any = None  # diffusers' EMAModel over ``params`` (--ema)
    step_graphs: Any = None  # ``StepGraphs`` replaying each step as a CUDA graph (--graph-step)
    validation_items: list[Any] = field(default_factory=list)  # held-out images (--validation-*)
    validation: list[Any] = field(default_factory=list)  # their fixed latents, noise and timesteps
    _epoch: tuple[int, list[list[int]]] | None = None
    _masks: dict[tuple[int, Any], torch.Tensor] = field(default_factory=dict)  # --masked-loss, by crop
    _evaluating: int = 0  # depth of ``evaluating`` blocks
    _ema_in: bool = False  # the EMA weights are in the model now

    @property
    def family(self) -> Family:
        return self.base.family

    @property
    def components(self) -> dict[str, Any]:
        return self.base.components

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def items(self) -> list[Any]:
        return self.dataset.items

    @property
    def run_dir(self) -> Path:
        return self.config.effective_run_dir

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    @property
    def cuda_graphs(self) -> bool:
        return self.config.cuda_graphs and self.device.type == "cuda"

    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (the last epoch's are kept; the loop asks per micro-step)."""
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_batches(self.items, self.global_batch, self.config.seed, epoch))
        return self._epoch[1]

    def my_share(self, global_batch: list[int]) -> list[int]:
        """Positions in the global batch this process trains on (every process gets at least one)."""
        n = self.accelerator.num_processes
        positions = list(range(len(global_batch)))
        positions = (positions * n)[: max(n, len(positions))]  # repeat a batch smaller than n
        return positions[self.accelerator.process_index :: n]

    def latent(self, index: int, rng: random.Random | None) -> tuple[torch.Tensor, Any, Any]:
        """``(latent, original size, crop)`` of item ``index``; a random crop when ``rng`` is given."""
        item = self.items[index]
        pixels, original_size, crop = load_training_image(item, item.bucket, rng)
        latent = encode_latents(self.components["vae"], pixels[None]).to(self.weight_dtype)[0]
        return latent, original_size, crop

    def loss_mask(self, index: int, crop: Any, latent_hw: tuple[int, int]) -> torch.Tensor:
        """Item ``index``'s loss mask on the latent grid (1, h, w), cropped as its latent was."""
        key = (index, tuple(crop))
        if key not in self._masks:
            item = self.items[index]
            root = Path(self.config.reg_dir).expanduser() if item.is_reg else self.data_config.root
            mask = load_mask(item.path, root, (item.width, item.height), item.bucket, crop)
            self._masks[key] = latent_mask(mask, tuple(latent_hw))
        return self._masks[key]

    @contextmanager
    def evaluating(self, ema: bool = True) -> Iterator[None]:
        """The adapter as it is used: models in eval mode, a schedule-free optimizer's averaged
        weights and, with ``ema``, the EMA weights in place; training weights come back after.
        Blocks nest (a checkpoint saves the training state, then exports the adapter inside)."""
        outer = self._evaluating == 0
        if outer:
            for model in self.models.values():
                model.eval()
            self.set_input_casts(True)  # previews may run the bare modules, outside autocast
            optimizer_mode(self.optimizer, training=False)
        swap = ema and self.ema is not None and not self._ema_in
        if swap:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
            self._ema_in = True
        self._evaluating += 1
        try:
            yield
        finally:
            self._evaluating -= 1
            if swap:
                self.ema.restore(self.params)
                self._ema_in = False
            if outer:
                optimizer_mode(self.optimizer, training=True)
                for model in self.models.values():
                    model.train()
                self.set_input_casts(False)

    def set_input_casts(self, enabled: bool) -> None:
        """The denoiser's adapter layers cast their inputs (``enabled``) or, in a mixed-precision
        step that runs under autocast, leave them to autocast (``--adapter-input-casts`` off)."""
        if self.weight_dtype != torch.float32 and not self.config.adapter_input_casts:
            set_input_casts(self.components[self.family.denoiser], enabled)

    def encode_text(self, captions: list[str]) -> Any:
        """The family's conditioning, ``--clip-skip`` layers from the end when it is set."""
        skip = {"clip_skip": self.config.clip_skip} if self.config.clip_skip else {}
        return self.family.encode_text(self.components, captions, self.device, **skip)

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> Any:
        """``encode_text`` from ``family.tokenize_captions``' ids (capturable families)."""
        return self.family.encode_tokens(self.components, tokens, self.config.clip_skip)

    def validate(self) -> float:
        """The validation loss of the adapter as it is used now (studio/training/validation.py)."""
        from studio.training.hooks import on_device
        from studio.training.validation import validation_loss

        parked = [self.components[name] for name in self.parked if name != "vae"]
        with on_device(parked, self.device), self.evaluating():
            return validation_loss(
                self.validation, self.family, self.components, self.models[self.family.denoiser],
                self.noise_scheduler, self.encode_text, self.device, self.weight_dtype,
            )  # fmt: skip

    def export(self, output: Path, file_format: str, steps: int) -> list[Path]:
        """Write the adapter as it is used now (kohya and/or diffusers files, with metadata)."""
        with self.evaluating():
            return self._export(output, file_format, steps)

    def _export(self, output: Path, file_format: str, steps: int) -> list[Path]:
        unwrapped = {
            k: self.accelerator.unwrap_model(v, keep_torch_compile=False) for k, v in self.models.items()
        }
        lora = extract_lora({**self.components, **unwrapped})
        settings = dataclasses.replace(self.config, output=str(output), format=file_format)
        epochs = math.ceil(steps / self.steps_per_epoch)
        # Adapter files follow the adapter family's conventions (a variant writes its parent's files).
        base = dataclasses.replace(self.base, family=self.family.adapter_family)
        return export_adapter(
            settings, base, lora, self.dataset, self.resolution, steps, self.started, epochs,
            self.accelerator.num_processes,
        )  # fmt: skip

    def save_checkpoint(self, with_adapter: bool = False) -> Path:
        """A checkpoint of the current step; ``with_adapter`` adds a usable kohya file inside it.
        Saved in eval mode, so a schedule-free run resumes from the very weights it continued on."""
        with self.evaluating(ema=False):
            path = save_checkpoint(
                self.run_dir, self.state, self.trainable, self.optimizer, self.lr_scheduler, self.generator,
                self.config.to_dict(), self.config.keep_checkpoints, self.ema,
            )  # fmt: skip
            if with_adapter:
                step = self.state.step
                self.export(path / checkpoint_adapter_name(self.config.output, step), "kohya", step)
        return path

    def adapter_in(self, checkpoint: Path) -> Path:
        return checkpoint / checkpoint_adapter_name(self.config.output, self.state.step)


def mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _precision_of_this_run(mixed: str) -> None:
    """accelerate keeps one mixed precision per process and refuses another; a later run in the
    same process (the app's worker, after a run in another precision) starts its state afresh.
    The process group (``PartialState``) stays as it is."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()


def low_memory(config: TrainConfig) -> TrainConfig:
    """What ``low_memory`` switches on (8-bit Adam only where bitsandbytes is installed)."""
    if not config.low_memory:
        return config
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()
    return dataclasses.replace(
        config,
        gradient_checkpointing=True,
        train_text_encoder=False,
        optimizer="adamw8bit" if has_bnb else config.optimizer,
    )


def setup_run(config: TrainConfig, base: BaseModel | None = None) -> TrainRun:
    """Everything up to the first step; ``base`` trains on an already loaded model."""
    config.validate()
    if config.validate_every and not (config.validation_split or config.validation_dir):
        raise StudioError("--validate-every needs --validation-split F or --validation-dir DIR")
    check_optimizer_package(config.optimizer)
    config = low_memory(config)
    config = dataclasses.replace(config, mixed_precision=mixed_precision(config.mixed_precision))
    started = time.time()
    logging = _tracker(config)
    _precision_of_this_run(config.mixed_precision)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=not torch.cuda.is_available(),  # several CPU processes (tests) talk over gloo
        log_with=logging,
        project_dir=str(config.effective_run_dir / "logs") if logging else None,
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    base = base_as_trained(config, base or load_base(config.base, config=config.base_config))
    if accelerator.device.type == "cuda" and base.family.denoiser == "transformer":
        # cuDNN's fused attention fails its backward on the flow transformers' shapes (torch 2.11,
        # H200: "mha_graph.execute(...).is_good()"); the flash and memory-efficient kernels train them.
        torch.backends.cuda.enable_cudnn_sdp(False)
    resolution = config.resolution or base.family.default_resolution
    data_config, dataset = _scan(config, resolution, accelerator)
    dataset, held_out = _held_out(config, data_config, dataset)
    torch.manual_seed(config.seed)
    trainable = _attach_adapter(config, base, accelerator.device, weight_dtype)
    run = TrainRun(
        config, accelerator, weight_dtype, base, data_config, dataset, resolution, trainable, started=started
    )
    run.samples = expand_samples(dataset.items)
    run.validation_items = held_out
    run.noise_scheduler = noise_schedule(config, run.family.training_scheduler(base.pipeline))
    _caches(run)
    if held_out:
        from studio.training.validation import prepare_validation

        run.validation = prepare_validation(
            held_out, run.components, run.noise_scheduler, config.seed, run.device
        )
    _park(run)
    _schedule(run)
    _optimizer(run)
    run.set_input_casts(False)
    run.generator.manual_seed(config.seed)
    if accelerator.is_main_process:  # other nodes of a multi-machine run may not share the folder
        run.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run.run_dir / "config.toml")
    if logging:
        scalars = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("studio", config=scalars, init_kwargs={"wandb": {"dir": str(run.run_dir)}})
    if config.resume:
        _resume(run)
    from studio.training.graph_step import step_graphs_for  # (it builds on this module)

    run.step_graphs = step_graphs_for(run)
    return run


def _held_out(
    config: TrainConfig, data_config: DatasetConfig, dataset: ScannedDataset
) -> tuple[ScannedDataset, list[Any]]:
    """The training set without its validation images, and those images (none without validation)."""
    from studio.training.validation import split_validation, validation_items

    if config.validation_dir:
        return dataset, validation_items(config.validation_dir, data_config)
    if not config.validation_split:
        return dataset, []
    kept, held = split_validation(dataset.items, config.validation_split, config.seed)
    return dataclasses.replace(dataset, items=kept), held


def _tracker(config: TrainConfig) -> str | None:
    """accelerate's tracker name for ``--log-with``; its package missing is one line. W&B runs
    offline (``WANDB_MODE=offline`` unless already set): nothing leaves the machine by itself."""
    if config.log_with == "none":
        return None
    if importlib.util.find_spec(config.log_with) is None:
        raise StudioError(
            f"--log-with {config.log_with} needs the {config.log_with} package",
            hint=f"pip install {config.log_with}, or leave --log-with out",
        )
    if config.log_with == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
    return config.log_with


def _scan(
    config: TrainConfig, resolution: int, accelerator: Accelerator
) -> tuple[DatasetConfig, ScannedDataset]:
    from studio.data import scan_dataset
    from studio.data.regularization import add_regularization

    data_config = DatasetConfig(
        root=config.data,
        trigger=config.trigger,
        resolution=resolution,
        bucket_step=config.bucket_step,
        random_crop=config.random_crop,
        shuffle_tags=config.shuffle_tags,
        keep_tokens=config.keep_tokens,
        caption_dropout=config.caption_dropout,
    )
    dataset = scan_dataset(data_config)
    if config.reg_dir:
        dataset = add_regularization(dataset, data_config, config.reg_dir)
    for warning in dataset.warnings:
        accelerator.print(f"warning: {warning}")
    return data_config, dataset


def _attach_adapter(
    config: TrainConfig, base: BaseModel, device: torch.device, weight_dtype: torch.dtype
) -> dict[str, torch.nn.Module]:
    """The adapter on the base: frozen base in the compute dtype (VAE in fp32), adapter parameters in fp32."""
    family, components = base.family, base.components
    if config.fp8_base:  # before LoRA, so only the base layers are stored in fp8
        store_in_fp8(components[family.denoiser], weight_dtype)
    inject_network(
        components, family, NetworkSpec.from_config(config), config.layers, config.train_text_encoder
    )
    te_names = list(family.text_encoder_names)
    trainable = {family.denoiser: components[family.denoiser]}
    if config.train_text_encoder:
        trainable.update({name: components[name] for name in te_names})
    for name in ("vae", family.denoiser, *te_names, *family.frozen_encoders):
        dtype = torch.float32 if name == "vae" else weight_dtype
        if not (name == family.denoiser and config.low_memory):  # low memory: it comes after caching
            components[name].to(device)
        if components[name].dtype != dtype and not (name == family.denoiser and config.fp8_base):
            components[name].to(dtype=dtype)
    cast_training_params(list(trainable.values()), dtype=torch.float32)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    components[family.denoiser].to(memory_format=memory_format)
    if config.gradient_checkpointing:
        components[family.denoiser].enable_gradient_checkpointing()
        if config.train_text_encoder:
            for name in te_names:
                components[name].gradient_checkpointing_enable({"use_reentrant": False})
    return trainable


def _schedule(run: TrainRun) -> None:
    """Steps of the run. Data parallel: every process walks the same global batches (batch_size
    per process) and takes its share, so N GPUs see what one GPU sees at N times the batch."""
    config = run.config
    run.global_batch = config.batch_size * run.accelerator.num_processes
    run.batches_per_epoch = len(epoch_batches(run.items, run.global_batch, config.seed, 0))
    run.steps_per_epoch = max(1, run.batches_per_epoch // config.gradient_accumulation)
    run.total_steps = config.steps or run.steps_per_epoch * (config.epochs or 10)


def _optimizer(run: TrainRun) -> None:
    """AdamW groups (denoiser lr, text-encoder lr), the lr schedule, and the models prepared."""
    config, accelerator, denoiser = run.config, run.accelerator, run.family.denoiser
    groups = []  # the denoiser first, then each text encoder (their own lr)
    for name, model in run.trainable.items():
        lr = config.lr if name == denoiser else config.effective_te_lr
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": lr})
    prodigy = {
        "d_coef": config.prodigy_d_coef,
        "safeguard_warmup": config.prodigy_safeguard_warmup,
        "use_bias_correction": config.prodigy_bias_correction,
    }
    optimizer = build_optimizer(
        groups, config.optimizer, config.lr, config.weight_decay, run.device, config.fused_optimizer,
        prodigy=prodigy, warmup_steps=config.warmup_steps,
    )  # fmt: skip
    # Schedule-free AdamW has no external schedule: it warms up inside the optimizer.
    free = config.optimizer == "schedulefree"
    run.lr_scheduler = build_lr_scheduler(
        "constant" if free else config.lr_scheduler, optimizer, 0 if free else config.warmup_steps,
        run.total_steps,
    )  # fmt: skip
    # Mixed precision only, no DDP wrapper: on several GPUs the gradients are averaged by hand,
    # once per step (studio/training/data_parallel.py).
    run.models = {k: accelerator.prepare_model(m, evaluation_mode=True) for k, m in run.trainable.items()}
    run.optimizer = accelerator.prepare(optimizer)
    run.params = [p for m in run.models.values() for p in m.parameters() if p.requires_grad]
    broadcast_parameters(run.params)
    if config.ema:
        from diffusers.training_utils import EMAModel

        run.ema = EMAModel(run.params, decay=config.ema_decay)
    if config.compile_blocks:  # validate() refuses it beside --compile and --cuda-graphs
        from studio.compile_blocks import compile_blocks

        compile_blocks(run.components[denoiser])
    if config.compile or config.cuda_graphs:
        from studio.compile_cache import use_persistent_compile_cache

        # Here rather than through accelerate's dynamo plugin: that setting lives in a per-process
        # singleton, so a second run in one process (the app's worker) would silently skip it.
        # The whole UNet; --compile-blocks compiles its repeated blocks alone, at static shapes,
        # inside the replayed steps (studio/compile_blocks.py).
        use_persistent_compile_cache()
        mode = "reduce-overhead" if run.cuda_graphs else None
        run.models[denoiser] = torch.compile(run.models[denoiser], mode=mode)


def _resume(run: TrainRun) -> None:
    checkpoint = resolve_checkpoint(run.config.resume)
    run.state = load_checkpoint(
        checkpoint, run.trainable, run.optimizer, run.lr_scheduler, run.generator, run.ema
    )
    run.accelerator.print(f"resumed from {checkpoint} at step {run.state.step}")
    if run.accelerator.is_main_process:
        trim_metrics(run.run_dir, run.state.step)


def _caches(run: TrainRun) -> None:
    """Latents by (image, bucket), frozen text outputs by caption text."""
    run.latent_cache = ContentCache(lambda index: run.latent(index, None))
    if not run.config.random_crop:
        shown = run.accelerator.is_main_process
        for index in progress(range(len(run.items)), desc="caching latents", shown=shown):
            run.latent_cache.get(index)
    encode = torch.no_grad()(run.encode_text)
    run.text_cache = ContentCache(
        lambda caption: tuple(t if t is None else t.detach() for t in encode([caption]))
    )


def _park(run: TrainRun) -> None:
    """Low memory: once everything they produce is cached, the VAE and frozen text encoders wait
    on the CPU (previews bring them back for a moment), and only then does the denoiser come to
    the device, so a Flux transformer and T5-XXL (9.5 GB) never share it."""
    config = run.config
    if config.low_memory and not config.random_crop:
        run.parked.append("vae")
    if config.low_memory and not config.train_text_encoder and not config.shuffle_tags:
        for caption in {item.caption for item in run.items} | {""}:
            run.text_cache.get(caption)
        run.parked += [*run.family.text_encoder_names, *run.family.frozen_encoders]
    for name in run.parked:
        run.components[name].to("cpu")
    if run.parked and run.device.type == "cuda":
        torch.cuda.empty_cache()
    run.components[run.family.denoiser].to(run.device)
