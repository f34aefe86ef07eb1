"""The fast generation path: the plain path's images, slider changes seen without a recompilation.

The first test compiles what the GPU compiles (inductor, "reduce-overhead"; a CPU skips
the CUDA graphs, a GPU replays them and must see the weights patched in place); the others
use the quick ``aot_eager`` backend, since recompiling per shape is dynamo's doing,
whatever the backend.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_adapters_support import make_kohya, tiny
from torch._dynamo.utils import counters

from studio.errors import StudioError
from studio.generate import FastPath, GenerationSession
from studio.mixer import AdapterWeights
from studio.recipes import GenerationSettings

FAST = GenerationSettings(prompt="a red circle", seed=7, steps=2, guidance=5.5, width=32, height=32)
QUICK = FastPath(compile="default", backend="aot_eager", channels_last=True)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled code of other tests (the UNet's forward, trained or not) must not use up dynamo's
    recompile limit, past which a new shape would silently run eager."""
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    pipe = tiny("sd1")
    return [
        make_kohya(tmp / f"{name}.safetensors", pipe, "sd1", seed) for name, seed in (("ink", 1), ("neon", 2))
    ]


def session(files, fast: FastPath, device: str = "cpu") -> GenerationSession:
    ink, neon = files
    session = GenerationSession(tiny("sd1").to(device), base="tiny-sd1", fast=fast)
    session.add_adapter(ink, AdapterWeights(0.8))
    session.add_adapter(neon, AdapterWeights(-0.3, text_encoder=0.5))
    return session


def images(session: GenerationSession, settings: GenerationSettings = FAST) -> np.ndarray:
    return np.stack([np.asarray(r.image, dtype=np.int16) for r in session.generate(settings)])


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding: fused or reordered kernels move a pixel by a level or two."""
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 3 and np.abs(a - b).mean() < 0.2


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def assert_follows_the_sliders_compiled_once(eager: GenerationSession, fast: GenerationSession) -> None:
    """``fast`` draws ``eager``'s images before and after a slider change, compiling only before."""
    start = graphs()
    before = images(eager)
    assert_same(images(fast), before)
    compiled = graphs()
    assert compiled > start
    for s in (eager, fast):
        s.set_weights("ink", AdapterWeights(-1.0))
    moved = images(eager)
    assert np.abs(moved - before).mean() > 2  # the slider visibly moves the image...
    assert_same(images(fast), moved)  # ...and the compiled UNet sees the in-place patch
    assert graphs() == compiled


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_images_match_eager_and_follow_the_sliders_without_recompiling(files, device):
    eager, fast = (
        session(files, FastPath(), device),
        session(files, FastPath.parse("reduce-overhead"), device),
    )
    skips = counters["inductor"]["cudagraph_skips"]
    assert_follows_the_sliders_compiled_once(eager, fast)
    if device == "cuda":
        assert counters["inductor"]["cudagraph_skips"] == skips  # CUDA graphs were replayed
    for s in (eager, fast):
        s.close()


@pytest.mark.parametrize(
    "device",
    [pytest.param("cpu", marks=pytest.mark.slow), pytest.param("cuda", marks=pytest.mark.gpu)],
)
def test_compiled_blocks_match_eager_follow_the_sliders_and_close_back_to_eager(files, device):
    """Inductor on the UNet's and VAE decoder's repeated blocks (replayed as graphs on a GPU)."""
    eager = session(files, FastPath(), device)
    fast = session(files, FastPath(graphs=device == "cuda", compile_blocks=True), device)
    assert_follows_the_sliders_compiled_once(eager, fast)
    if device == "cuda":
        assert [g.captures for g in fast.graphs] == [1, 1]
    unet = fast.pipeline.unet
    blocks = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    fast.close()
    assert all(m._compiled_call_impl is None for m in blocks)
    eager.close()


def test_a_new_size_or_batch_recompiles_and_still_matches(files):
    eager, fast = session(files, FastPath()), session(files, QUICK)
    start = graphs()
    for settings in (FAST, replace(FAST, width=48), replace(FAST, batch=2), FAST):
        assert_same(images(fast, settings), images(eager, settings))
    assert graphs() - start == 3  # one graph per shape; back at the first shape, no recompilation


def test_close_gives_the_eager_base_back(files):
    fast = session(files, QUICK)
    unet = fast.pipeline.unet
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images(fast)
    fast.close()
    assert "forward" not in vars(unet) and unet.conv_in.weight.is_contiguous()
    bare = GenerationSession(tiny("sd1"), base="tiny-sd1")
    assert_same(images(GenerationSession(fast.pipeline, base="tiny-sd1")), images(bare))


def test_channels_last_alone_gives_the_same_image(files):
    assert_same(images(session(files, FastPath(channels_last=True))), images(session(files, FastPath())))


def test_inductor_freezing_is_refused():
    """Freezing would bake today's weights into the graph: every later slider change would be lost."""
    from torch._inductor import config

    with config.patch(freezing=True), pytest.raises(StudioError, match="freezing"):
        GenerationSession(tiny("sd1"), base="tiny-sd1", fast=FastPath.parse("default"))


def test_parse():
    assert FastPath.parse("reduce-overhead") == FastPath(compile="reduce-overhead", channels_last=True)
    assert FastPath.parse("blocks") == FastPath(graphs=True, compile_blocks=True, channels_last=True)
    assert FastPath.parse("cudagraphs", channels_last=False) == FastPath(
        compile="default", backend="cudagraphs"
    )
    with pytest.raises(StudioError, match="unknown compile mode 'fastest'"):
        FastPath.parse("fastest")


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_compiled_regions_are_outermost_and_cover_every_repeated_block(model):
    """Each block is compiled once: inside a compiled region, or as one, never both."""
    from studio.compile_blocks import BLOCKS, outermost_blocks
    from studio.models.configs import build_components

    components = build_components(model, "meta", torch.float16, with_vae=True)
    for module in (components["unet"], components["vae"].decoder):
        regions = outermost_blocks(module)
        inside = {id(m) for region in regions for m in region.modules() if m is not region}
        assert regions and not any(id(region) in inside for region in regions)
        every = [m for m in module.modules() if type(m).__name__ in BLOCKS]
        assert {id(m) for m in every} == {id(r) for r in regions} | (inside & {id(m) for m in every})
    kinds = {type(r).__name__ for r in outermost_blocks(components["unet"])}
    assert kinds == {"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
