"""A small CNN that names the shape in a mask crop; trained on clean generator renders only.

It judges the base model's shapes: the generated image is read with the same
``read_single`` + ``shape_input`` path its training masks came from, so the only
difference it sees is the model's drawing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trainers.toyworld.analysis import SHAPE_INPUT, read_single, shape_input
from trainers.toyworld.render import render_scene
from trainers.toyworld.scene import SHAPES, scene_at


def make_network() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 16, len(SHAPES))
    )


def clean_examples(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks read back from clean single-object renders, with their true shapes."""
    inputs, labels = [], []
    for i in range(count):
        scene = scene_at(seed, i, n_objects=1, plain_probability=1.0)
        reading = read_single(render_scene(scene))
        inputs.append(shape_input(reading.mask))
        labels.append(SHAPES.index(scene.objects[0].shape))
    return torch.from_numpy(np.stack(inputs))[:, None], torch.tensor(labels)


def _augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Soften and re-threshold edges a little, as a generated shape's outline is softer."""
    if rng.random() < 0.5:
        x = nn.functional.avg_pool2d(x, 3, 1, 1)
        x = (x > rng.uniform(0.3, 0.7)).float()
    return x


@dataclass
class ShapeClassifier:
    network: nn.Module
    accuracy: float  # on fresh clean renders the classifier never trained on

    @torch.no_grad()
    def predict(self, masks: list[np.ndarray]) -> list[str]:
        self.network.eval()
        batch = torch.from_numpy(np.stack([shape_input(m) for m in masks]))[:, None]
        return [SHAPES[i] for i in self.network(batch).argmax(1).tolist()]


def train_shape_classifier(seed: int = 0, count: int = 4000, epochs: int = 12) -> ShapeClassifier:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    inputs, labels = clean_examples(count, seed=1000 + seed)
    test_inputs, test_labels = clean_examples(1000, seed=2000 + seed)
    network = make_network()
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    for _ in tqdm(range(epochs), desc="shape classifier"):
        network.train()
        order = torch.randperm(count)
        for start in range(0, count, 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(network(_augment(inputs[idx], rng)), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    network.eval()
    with torch.no_grad():
        accuracy = (network(test_inputs).argmax(1) == test_labels).float().mean().item()
    assert inputs.shape[-1] == SHAPE_INPUT
    return ShapeClassifier(network, accuracy)
