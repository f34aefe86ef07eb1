"""A1111 LoRA Block Weight vectors, against the extension's own definition.

The reference (hako-mikan/sd-webui-lora-block-weight, scripts/lora_block_weight.py): the block
lists BLOCKID12/17/20/26, ``to26`` (a shorter vector fills the blocks it lacks with 0), the
built-in presets DEF_WEIGHT_PRESET, and ``ratiodealer``: a key's block is the LDM name it
contains (``encoder`` -> BASE, ``input_blocks_N_`` -> INnn, ``middle_block_`` -> M00,
``output_blocks_N_`` -> OUTnn), anything else keeps 1. A1111 renames diffusers keys to LDM
ones before that (``down_blocks.b.*.j`` -> ``input_blocks.{3b+j+1}`` ...); the tables below
are that renaming written out by hand for the SD 1.5 and SDXL UNet layouts.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from test_adapters_support import make_kohya, tiny

from studio.adapters import load_adapter
from studio.errors import StudioError
from studio.formats.kohya_names import diffusers_to_sgm
from studio.generate import lora_tags
from studio.mixer import AdapterWeights, BlendItem, blend_terms
from studio.mixer.lbw import BLOCK_IDS, block_index, layers_per_block, parse_lbw
from studio.models.family import ModelFamily
from studio.recipes import AdapterEntry, GenerationSettings, Recipe

# The extension's lists and presets, copied from its source.
BLOCKID26 = ["BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "IN09", "IN10", "IN11", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]  # fmt: skip
BLOCKID17 = [
    "BASE",
    "IN01",
    "IN02",
    "IN04",
    "IN05",
    "IN07",
    "IN08",
    "M00",
    "OUT03",
    "OUT04",
    "OUT05",
    "OUT06",
    "OUT07",
    "OUT08",
    "OUT09",
    "OUT10",
    "OUT11",
]
BLOCKID12 = [
    "BASE",
    "IN04",
    "IN05",
    "IN07",
    "IN08",
    "M00",
    "OUT00",
    "OUT01",
    "OUT02",
    "OUT03",
    "OUT04",
    "OUT05",
]
BLOCKID20 = [
    "BASE",
    "IN00",
    "IN01",
    "IN02",
    "IN03",
    "IN04",
    "IN05",
    "IN06",
    "IN07",
    "IN08",
    "M00",
    "OUT00",
    "OUT01",
    "OUT02",
    "OUT03",
    "OUT04",
    "OUT05",
    "OUT06",
    "OUT07",
    "OUT08",
]  # noqa: E501
EXTENSION_PRESETS = """NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"""

# diffusers module prefix -> LBW block, as A1111 renames an SD 1.5 UNet (4 blocks, 2 layers each).
SD15_TABLE = {
    "conv_in": "IN00",
    "down_blocks.0.resnets.0": "IN01", "down_blocks.0.attentions.0": "IN01",
    "down_blocks.0.resnets.1": "IN02", "down_blocks.0.attentions.1": "IN02",
    "down_blocks.0.downsamplers.0": "IN03",
    "down_blocks.1.resnets.0": "IN04", "down_blocks.1.attentions.0": "IN04",
    "down_blocks.1.resnets.1": "IN05", "down_blocks.1.attentions.1": "IN05",
    "down_blocks.1.downsamplers.0": "IN06",
    "down_blocks.2.resnets.0": "IN07", "down_blocks.2.attentions.0": "IN07",
    "down_blocks.2.resnets.1": "IN08", "down_blocks.2.attentions.1": "IN08",
    "down_blocks.2.downsamplers.0": "IN09",
    "down_blocks.3.resnets.0": "IN10", "down_blocks.3.resnets.1": "IN11",
    "mid_block": "M00",
    "up_blocks.0.resnets.0": "OUT00", "up_blocks.0.resnets.1": "OUT01", "up_blocks.0.resnets.2": "OUT02",
    "up_blocks.0.upsamplers.0": "OUT02",
    "up_blocks.1.resnets.0": "OUT03", "up_blocks.1.attentions.0": "OUT03",
    "up_blocks.1.resnets.1": "OUT04", "up_blocks.1.attentions.1": "OUT04",
    "up_blocks.1.resnets.2": "OUT05", "up_blocks.1.attentions.2": "OUT05", "up_blocks.1.upsamplers.0": "OUT05",
    "up_blocks.2.resnets.0": "OUT06", "up_blocks.2.attentions.0": "OUT06",
    "up_blocks.2.resnets.1": "OUT07", "up_blocks.2.attentions.1": "OUT07",
    "up_blocks.2.resnets.2": "OUT08", "up_blocks.2.attentions.2": "OUT08", "up_blocks.2.upsamplers.0": "OUT08",
    "up_blocks.3.resnets.0": "OUT09", "up_blocks.3.attentions.0": "OUT09",
    "up_blocks.3.resnets.1": "OUT10", "up_blocks.3.attentions.1": "OUT10",
    "up_blocks.3.resnets.2": "OUT11", "up_blocks.3.attentions.2": "OUT11",
}  # fmt: skip
# SDXL: 3 blocks of 2 layers; attention only in down 1-2 and up 0-1 (the 12-value vector's blocks).
SDXL_TABLE = {
    "conv_in": "IN00",
    "down_blocks.0.resnets.0": "IN01", "down_blocks.0.resnets.1": "IN02", "down_blocks.0.downsamplers.0": "IN03",
    "down_blocks.1.resnets.0": "IN04", "down_blocks.1.attentions.0": "IN04",
    "down_blocks.1.resnets.1": "IN05", "down_blocks.1.attentions.1": "IN05",
    "down_blocks.1.downsamplers.0": "IN06",
    "down_blocks.2.resnets.0": "IN07", "down_blocks.2.attentions.0": "IN07",
    "down_blocks.2.resnets.1": "IN08", "down_blocks.2.attentions.1": "IN08",
    "mid_block": "M00",
    "up_blocks.0.resnets.0": "OUT00", "up_blocks.0.attentions.0": "OUT00",
    "up_blocks.0.resnets.1": "OUT01", "up_blocks.0.attentions.1": "OUT01",
    "up_blocks.0.resnets.2": "OUT02", "up_blocks.0.attentions.2": "OUT02", "up_blocks.0.upsamplers.0": "OUT02",
    "up_blocks.1.resnets.0": "OUT03", "up_blocks.1.attentions.0": "OUT03",
    "up_blocks.1.resnets.1": "OUT04", "up_blocks.1.attentions.1": "OUT04",
    "up_blocks.1.resnets.2": "OUT05", "up_blocks.1.attentions.2": "OUT05", "up_blocks.1.upsamplers.0": "OUT05",
    "up_blocks.2.resnets.0": "OUT06", "up_blocks.2.resnets.1": "OUT07", "up_blocks.2.resnets.2": "OUT08",
}  # fmt: skip


def to26(values: list[float]) -> list[float]:
    """The extension's ``to26``."""
    ids = {12: BLOCKID12, 17: BLOCKID17, 20: BLOCKID20, 26: BLOCKID26}[len(values)]
    out = [0.0] * 26
    for i, block in enumerate(ids):
        out[BLOCKID26.index(block)] = values[i]
    return out


def reference_block(path: str, table: dict[str, str]) -> str | None:
    hits = [block for prefix, block in table.items() if path == prefix or path.startswith(prefix + ".")]
    assert len(hits) <= 1, path
    return hits[0] if hits else None


def unet(down: tuple[str, ...], up: tuple[str, ...]) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(8,) * len(down), layers_per_block=2, down_block_types=down, up_block_types=up,
        norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2, sample_size=8,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("down", "up", "table"),
    [
        (("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, SD15_TABLE),
        (("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2, ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), SDXL_TABLE),
    ],
    ids=["sd15", "sdxl"],
)  # fmt: skip
def test_every_unet_layer_maps_onto_the_extensions_block(down, up, table):
    model = unet(down, up)
    paths = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(paths) > 100
    for path in paths:
        expected = reference_block(path, table)
        got = block_index("unet", path, layers_per_block({"unet": model}))
        assert (BLOCK_IDS[got] if got is not None else None) == expected, path
    outside = {p.split(".")[0] for p in paths if reference_block(p, table) is None}
    assert outside == {"time_embedding", "conv_out"}  # LBW matches no block there: they keep 1


def test_other_layouts_number_blocks_as_the_ldm_names_do():
    """The embedded model has 1 layer per block: its blocks follow the LDM names kohya's renamer gives."""
    for per_block in (1, 2, 3):
        config = type(
            "Config", (), {"layers_per_block": per_block, "up_block_types": ("CrossAttnUpBlock2D",) * 3}
        )
        for path in ["conv_in", "down_blocks.1.attentions.0.proj_in", "down_blocks.0.downsamplers.0.conv",
                     "up_blocks.1.attentions.1.proj_out", "up_blocks.0.upsamplers.0.conv", "mid_block.resnets.1.conv1",
                     "down_blocks.0.resnets.0.conv1", "up_blocks.2.resnets.1.conv2"]:  # fmt: skip
            m = re.match(r"(input|output)_blocks\.(\d+)|middle_block", diffusers_to_sgm(path, config))
            name = (
                "M00" if m[0] == "middle_block" else ("IN" if m[1] == "input" else "OUT") + f"{int(m[2]):02d}"
            )
            assert BLOCK_IDS[block_index("unet", path, per_block)] == name, (per_block, path)


@pytest.mark.parametrize("line", EXTENSION_PRESETS.splitlines(), ids=lambda line: line.split(":")[0])
def test_each_preset_is_the_extensions(line):
    name, values = line.split(":")
    assert list(parse_lbw(name)) == to26([float(v) for v in values.split(",")])
    assert parse_lbw(name.lower()) == parse_lbw(name)


@pytest.mark.parametrize("ids", [BLOCKID12, BLOCKID17, BLOCKID20, BLOCKID26], ids=lambda ids: str(len(ids)))
def test_vectors_of_each_length_fill_the_missing_blocks_with_zero(ids):
    values = [round(0.1 * (i + 1), 2) for i in range(len(ids))]
    ratios = parse_lbw(", ".join(map(str, values)))
    assert list(ratios) == to26(values)
    assert dict(zip(BLOCK_IDS, ratios, strict=True))[ids[-1]] == values[-1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FOO", "block weight vector: unknown preset 'FOO'"),
        ("1,0,1", "block weight vector: 3 values, but it needs 12, 17, 20 or 26"),
        (",".join(["1"] * 16), "16 values"),
        (",".join(["1"] * 16 + ["R"]), "'R' is not a number"),
        (",".join(["1"] * 16 + ["nan"]), "'nan' is not a number"),
    ],
)
def test_a_bad_vector_is_one_line_with_the_fix(text, message):
    with pytest.raises(StudioError, match=re.escape(message)) as err:
        AdapterWeights(lbw=text)
    assert "\n" not in str(err.value) and "MIDD" in str(err.value)
    assert parse_lbw("") is None and parse_lbw("  ") is None


def test_a_vector_scales_each_layer_by_its_blocks_ratio(tmp_path):
    """On a real adapter: c = weight × ratio(block), BASE on the text encoder, 1 outside the blocks;
    a 17-value vector is the 26-value one with 0 where it lists nothing."""
    pipe = tiny("sd1")
    path = make_kohya(tmp_path / "a.safetensors", pipe, "sd1", 1, conv=True)
    adapter = load_adapter(path, pipe.components, ModelFamily.SD1)
    values17 = [0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    per_block = layers_per_block(pipe.components)
    terms = blend_terms(
        [BlendItem(adapter, AdapterWeights(0.5, lbw=",".join(map(str, values17))))], per_block
    )
    ratios = dict(zip(BLOCKID26, to26(values17), strict=True))
    checked = set()
    for (component, layer_path), ((_, coefficient),) in terms.items():
        index = block_index(component, layer_path, per_block)
        expected = 0.5 * (ratios[BLOCK_IDS[index]] if index is not None else 1.0)
        assert coefficient == pytest.approx(expected), layer_path
        checked.add(BLOCK_IDS[index] if index is not None else None)
    assert {"BASE", "M00"} <= checked
    as26 = ",".join(map(str, to26(values17)))
    assert blend_terms([BlendItem(adapter, AdapterWeights(0.5, lbw=as26))], per_block) == terms
    plain = blend_terms([BlendItem(adapter, AdapterWeights(0.5))], per_block)
    assert plain != terms and len(plain) >= len(terms)


def test_vectors_ride_in_recipes_and_a1111_parameters():
    weights = AdapterWeights(0.8, lbw="MIDD", blocks={"mid": 0.5})
    recipe = Recipe(
        "default", GenerationSettings("a cat"), [AdapterEntry("ink", "/x/ink.safetensors", "0", weights)]
    )
    back = Recipe.from_dict(recipe.to_dict())
    assert back.adapters[0].weights == weights and back.adapters[0].weights.lbw == "MIDD"
    assert lora_tags(recipe) == "<lora:ink:0.8:lbw=MIDD>"
    assert "lbw" not in AdapterWeights(0.8).to_dict()  # recipes without a vector stay as they were
