"""The named API endpoints, driven with ``gradio_client`` against a real app process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_app_support import TINY_TRAINING, AppProcess, wait_for

from studio.recipes import read_recipe
from studio.samples import make_demo_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("api") / "ws"
    make_demo_dataset(workspace / "datasets" / "shapes", count=4)
    server = AppProcess(workspace)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app):
    return app.client()


def _finished(client, job_id: int) -> dict:
    status = wait_for(
        lambda: (
            (s := client.predict(job_id, api_name="/job_status"))["status"]
            not in ("new", "queued", "running")
            and s
        ),
        300,
        f"job {job_id}",
        every=1,
    )
    assert status["status"] == "finished", status
    return status


def test_train_status_list_and_generate(app, client):
    names = {
        endpoint for endpoint in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    }
    assert {
        "/train",
        "/job_status",
        "/list_jobs",
        "/stop_job",
        "/resume_job",
        "/generate",
        "/list_adapters",
    } <= names
    assert client.predict(api_name="/list_adapters") == []

    queued = client.predict("shapes", "ink", "Quick demo (embedded model)", "default", "inkstyle",
                            json.dumps(TINY_TRAINING), api_name="/train")  # fmt: skip
    assert queued["status"] in ("queued", "running") and queued["name"] == "ink"
    status = _finished(client, queued["id"])
    assert (status["step"], status["total"], status["percent"], status["adapter"]) == (3, 3, 100.0, "ink")

    adapters = client.predict(api_name="/list_adapters")
    assert [(a["name"], a["family"], a["trigger"], a["images"], a["source"]) for a in adapters] == [
        ("ink", "SD1", "inkstyle", 4, "trained")
    ]
    assert (app.workspace / adapters[0]["file"]).is_file()

    def generate(weight: float) -> str:
        blend = json.dumps([{"name": "ink", "weight": weight}])
        return client.predict("a circle, inkstyle", blend, "", 5, 2, 5.0, 32, 32, "euler-a", "default",
                              api_name="/generate")  # fmt: skip

    strong, off = generate(1.5), generate(0.0)
    pixels = [np.asarray(Image.open(path), dtype=np.int16) for path in (strong, off)]
    assert pixels[0].shape == (32, 32, 3)
    assert np.abs(pixels[0] - pixels[1]).max() > 0, "the adapter weight must change the image"
    recipe = read_recipe(strong)  # the downloaded PNG carries its recipe
    assert [(a.name, a.weights.weight) for a in recipe.adapters] == [("ink", 1.5)]
    assert (recipe.settings.seed, recipe.settings.steps) == (5, 2)
    blocks = json.dumps([{"name": "ink", "weight": 1.0, "blocks": {"down": 0.5, "up.1": 0}}])
    shaped = client.predict(
        "a circle", blocks, "", 5, 2, 5.0, 32, 32, "euler-a", "default", api_name="/generate"
    )
    assert read_recipe(shaped).adapters[0].weights.blocks == {"down": 0.5, "up.1": 0.0}


def test_bad_requests_get_clear_messages(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="outside the workspace"):
        client.predict("/etc", "x", "Quick demo (embedded model)", "default", "", "{}", api_name="/train")
    with pytest.raises(AppError, match="unknown preset"):
        client.predict("shapes", "x", "Turbo", "default", "", "{}", api_name="/train")
    with pytest.raises(AppError, match="unknown option"):
        client.predict(
            "shapes", "x", "Quick demo (embedded model)", "default", "", '{"stepz": 3}', api_name="/train"
        )
    with pytest.raises(AppError, match="no training job #999"):
        client.predict(999, api_name="/job_status")
    with pytest.raises(AppError, match="no adapter 'nope' in the library"):
        client.predict(
            "a cat", '[{"name": "nope"}]', "", 0, 2, 5.0, 32, 32, "euler-a", "default", api_name="/generate"
        )
