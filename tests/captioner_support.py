"""Tiny captioner models of the real formats, built offline for the captioning tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 16  # the tiny tagger's input side
# (name, category, score): the tiny tagger's tags and the constant score it gives each one.
# Scores are exact in float32, so a threshold test is exact. "blue_background" is instead
# scored as the mean blue channel / 255, which checks the BGR order of the preprocessing.
TAGS = [
    ("general", "9", 0.9375),
    ("sensitive", "9", 0.5),
    ("long_hair", "0", 0.75),
    ("^_^", "0", 0.625),
    ("smile", "0", 0.5),
    ("watermark", "0", 0.875),
    ("hatsune_miku", "4", 0.25),
    ("blue_background", "0", None),
]


def build_tagger(folder: Path) -> Path:
    """A WD14-layout tagger: model.onnx (NHWC BGR float32 in, scores out) + selected_tags.csv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    n_in = SIDE * SIDE * 3
    weight = np.zeros((n_in, len(TAGS)), dtype=np.float32)
    blue = [i for i, (name, _, _) in enumerate(TAGS) if name == "blue_background"][0]
    weight[0::3, blue] = 1.0 / (255.0 * SIDE * SIDE)  # channel 0 of BGR is blue
    bias = np.array([score or 0.0 for _, _, score in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input_1:0"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["mixed"]),
            helper.make_node("Add", ["mixed", "bias"], ["predictions_sigmoid"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["N", SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["N", len(TAGS)])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    with (folder / "selected_tags.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _) in enumerate(TAGS):
            writer.writerow([1000 + i, name, category, 100 - i])
    return folder


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


def save_images(folder: Path, colours: dict[str, tuple[int, int, int]]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, colour in colours.items():
        paths[name] = folder / f"{name}.png"
        solid(colour).save(paths[name])
    return paths
