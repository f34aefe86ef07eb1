"""The app's advanced training options are generated from the option table and read back typed."""

from __future__ import annotations

import gradio as gr
import pytest

from studio.app.ui.train_tab import _ADVANCED, _widget, config_from_widgets, preset_values
from studio.config import LAYER_SETS, TrainConfig
from studio.options import Show, specs
from studio.presets import PRESETS


def test_the_accordion_has_exactly_the_advanced_options_in_table_order():
    assert [s.name for s in _ADVANCED] == [
        s.name for s in specs(TrainConfig) if Show.ADVANCED in s.option.show
    ]
    assert {"layers", "steps", "resolution", "sample_prompts"} <= {s.name for s in _ADVANCED}
    assert "preset" not in {s.name for s in _ADVANCED}


def test_widgets_follow_each_options_type_choices_and_bounds():
    made = {spec.name: _widget(spec, value) for spec, value in zip(_ADVANCED, preset_values(""))}
    assert isinstance(made["layers"], gr.Dropdown)
    assert [c[0] for c in made["layers"].choices] == list(LAYER_SETS)
    assert isinstance(made["train_text_encoder"], gr.Checkbox)
    assert isinstance(made["sample_prompts"], gr.Textbox)
    assert (made["caption_dropout"].minimum, made["caption_dropout"].maximum) == (0, 1)
    assert made["rank"].precision == 0 and made["lr"].precision is None
    assert all(w.label for w in made.values())


@pytest.mark.parametrize("name", [*PRESETS, "no preset"])
def test_every_preset_round_trips_through_the_form(name):
    config = PRESETS[name].apply() if name in PRESETS else TrainConfig()
    values = config_from_widgets(preset_values(name))
    assert values == {spec.name: getattr(config, spec.name) for spec in _ADVANCED}
    TrainConfig.from_dict(values)  # valid as typed


def test_form_values_come_back_typed():
    raw = dict(zip((s.name for s in _ADVANCED), preset_values("")))
    raw.update(steps=None, alpha=0, resolution=128.0, seed=7.0, lr=0.002, sample_prompts="a\n\n b \n")
    values = config_from_widgets([raw[s.name] for s in _ADVANCED])
    assert values["steps"] is None and values["alpha"] is None  # empty or 0: "not set"
    assert values["resolution"] == 128 and isinstance(values["resolution"], int)
    assert values["seed"] == 7 and isinstance(values["seed"], int)
    assert values["sample_prompts"] == ["a", "b"]
