"""The app's small pieces of logic without a server: messages, block fields, job lines, forms, guards."""

from __future__ import annotations

import json
import time

import gradio as gr
import pytest

from studio.app.block_fields import block_field_texts, parse_block_fields
from studio.app.db import Database
from studio.app.messages import shown_path, shown_paths
from studio.app.mixing import Slot, settings_from
from studio.app.models import base_fields
from studio.app.training import followed_job, job_message
from studio.app.ui.common import guard
from studio.app.workspace import Workspace
from studio.errors import StudioError
from studio.families import FLUX


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def test_messages_show_paths_relative_to_the_workspace_or_by_upload_name(ws):
    root = ws.root
    upload = f"{root}/uploads/.gradio/0f3a9c1e77/box_01.png"
    assert shown_paths(f"{upload}: the image carries no studio recipe", root) == (
        "box_01.png: the image carries no studio recipe"
    )
    assert shown_path(root / "datasets" / "shapes" / "a.png", root) == "datasets/shapes/a.png"
    text = f"not found: {root}/adapters/x.safetensors and {root}/uploads/.gradio/ab/evil.zip"
    assert shown_paths(text, root) == "not found: adapters/x.safetensors and evil.zip"
    assert shown_paths("/etc/passwd: outside the workspace", root) == "/etc/passwd: outside the workspace"
    unresolved = ws.root.parent / "link"
    unresolved.symlink_to(root)
    assert shown_paths(f"{unresolved}/recipes/a.json", unresolved) == "recipes/a.json"


def test_block_fields_round_trip_every_key_a_recipe_can_hold():
    blocks = {"down": 0.5, "down.1": 0.0, "mid": 0.25, "up.2": 1.5, "up": -1.0, "down.0": 0.123456789}
    texts = block_field_texts(blocks)
    assert texts == {
        "down": "0.5, 0:0.123456789, 1:0",
        "mid": "0.25",
        "up": "-1, 2:1.5",
        "double": "",
        "single": "",
    }
    assert parse_block_fields(texts) == blocks
    assert parse_block_fields({"down": "", "mid": None, "up": " 1 "}) == {"up": 1.0}
    assert block_field_texts({}) == {"down": "", "mid": "", "up": "", "double": "", "single": ""}
    flow = {"double": 0.75, "double.0": 0.0, "single.11": 2.0}  # a flow transformer's blocks
    assert block_field_texts(flow) == {
        "down": "",
        "mid": "",
        "up": "",
        "double": "0.75, 0:0",
        "single": "11:2",
    }
    assert parse_block_fields(block_field_texts(flow)) == flow
    weights = Slot("ink", True, 1.0, 1.0, 1.0, parse_block_fields({"single": "0.5, 3:0"})).weights
    assert (
        weights.coefficient("transformer", "single_transformer_blocks.3.attn.to_q", group=FLUX.layer_group)
        == 0
    )
    assert (
        weights.coefficient("transformer", "single_transformer_blocks.2.proj_out", group=FLUX.layer_group)
        == 0.5
    )
    assert weights.coefficient("transformer", "transformer_blocks.2.attn.to_q", group=FLUX.layer_group) == 1
    with pytest.raises(StudioError, match="block weight down: 'half' is not a number"):
        parse_block_fields({"down": "half"})
    with pytest.raises(StudioError, match="mid has no numbered blocks"):
        parse_block_fields({"mid": "1:0.5"})


def test_api_slots_carry_blocks_and_refuse_bad_values():
    slot = Slot.from_entry({"name": "ink", "weight": 0.5, "blocks": {"down": 1, "up.1": 0}})
    assert slot == Slot("ink", True, 0.5, 1.0, 1.0, {"down": 1.0, "up.1": 0.0})
    assert slot.weights.coefficient("unet", "up_blocks.1.attentions.0.proj_in") == 0.0
    with pytest.raises(StudioError, match="unknown UNet block 'side'"):
        Slot.from_entry({"name": "ink", "blocks": {"side": 1}})
    with pytest.raises(StudioError, match="must be numbers"):
        Slot.from_entry({"name": "ink", "weight": "strong"})
    assert settings_from("  a cat ", "", None, 2, 5, 0, "", "euler-a").width is None
    with pytest.raises(StudioError, match="type a prompt"):
        settings_from(" ", "", 0, 2, 5, 0, 0, "euler-a")


def test_recipe_bases_land_in_the_right_picker(ws):
    (ws.models / "mine.safetensors").write_bytes(b"x")
    assert base_fields(ws, "default") == ("default", "", True)
    assert base_fields(ws, str(ws.models / "mine.safetensors")) == ("models/mine.safetensors", "", True)
    assert base_fields(ws, "owner/model") == ("default", "owner/model", True)
    assert base_fields(ws, "/elsewhere/model.safetensors") == ("default", "", False)


def _job(db: Database, status: str, **values) -> int:
    job_id = db.add_job("ink", {"data": "x"})
    db.update_job(job_id, status=status, **values)
    return job_id


def test_the_message_line_follows_the_job_it_speaks_of(ws):
    db = Database(ws.db_path)
    job = _job(db, "queued")
    assert job_message(db.job(job), ws.root) == f"Queued job #{job}."
    db.update_job(job, status="running", stop_requested=1)
    assert job_message(db.job(job), ws.root) == f"Stopping job #{job}…"
    db.update_job(job, status="stopped", error="stopped by the user")
    assert job_message(db.job(job), ws.root) == f"Job #{job} stopped: stopped by the user."
    db.update_job(job, status="queued", resume=1)
    assert (
        job_message(db.job(job), ws.root)
        == f"Job #{job} has no checkpoint yet: queued to start over from step 0."
    )
    checkpoint = ws.root / "run" / "checkpoints" / "step-000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text("{}")
    db.update_job(job, config=json.dumps({"data": "x", "run_dir": str(ws.root / "run")}))
    assert job_message(db.job(job), ws.root, position=2) == (
        f"Job #{job} queued to resume from its last checkpoint. It is 2 in the queue."
    )
    db.update_job(job, status="failed", error=f"{ws.root}/datasets/x: no images")
    assert job_message(db.job(job), ws.root) == f"Job #{job} failed: datasets/x: no images."
    db.update_job(job, status="finished")
    assert "finished" in job_message(db.job(job), ws.root)


def test_the_progress_panel_follows_the_queue(ws):
    db = Database(ws.db_path)
    assert followed_job(db, None, None) is None
    first = _job(db, "running")
    second = _job(db, "queued")
    assert followed_job(db, None, None) == first  # the running job, not the newest
    assert followed_job(db, first, "running") == first
    db.update_job(first, status="finished", finished=time.time())
    assert followed_job(db, first, "running") == second  # it ended while shown: on to the next
    assert followed_job(db, first, "running", pinned=True) == second  # picked while it ran: the same
    assert followed_job(db, first, "finished", pinned=True) == first  # picked after it ended: it stays
    assert followed_job(db, first, None) == second  # shown since it ended, not picked: the queue wins
    db.update_job(second, status="failed")
    assert followed_job(db, first, "finished") == first  # nothing else to show


def test_guard_leaves_outputs_alone_and_shows_paths_as_the_user_knows_them(ws):
    def fails():
        raise StudioError("no studio recipe", path=ws.root / "uploads/.gradio/abc/plain.png")

    with pytest.warns(UserWarning, match=r"^plain.png: no studio recipe$"):
        assert guard(ws.root)(fails)() == gr.skip()
    with pytest.raises(gr.Error) as raised:
        guard(ws.root, api=True)(fails)()
    assert raised.value.message == "plain.png: no studio recipe"

    def bug():
        raise KeyError("x")

    with pytest.warns(UserWarning, match="internal error .KeyError"):
        assert guard(ws.root)(bug)() == gr.skip()
    assert guard(ws.root, quiet=True)(bug)() == gr.skip()
