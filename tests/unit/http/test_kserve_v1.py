"""KServe's v1 protocol on the real HTTP app."""

from __future__ import annotations

import base64

import httpx

from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService

PARAMS = {"prompt": "a paper boat on a puddle", "seed": 31, "steps": 5, "scheduler": "euler"}


def test_kserve_v1_lists_the_model_and_predicts_the_same_image(uncached: LocalService) -> None:
    assert httpx.get(uncached.url + "/v1/models").json() == {"models": ["sd-embedded"]}
    status = httpx.get(uncached.url + "/v1/models/sd-embedded", timeout=30).json()
    assert (status["name"], status["ready"]) == ("sd-embedded", True)
    parameters = status["parameters"]
    assert parameters["family"] == "sd" and parameters["defaults"]["scheduler"] == "default"
    assert parameters["defaults"]["shipped_scheduler"] == "PNDMScheduler"
    assert "ddim" in parameters["samplers"] and "lcm" not in parameters["samplers"]
    answer = httpx.post(
        uncached.url + "/v1/models/sd-embedded:predict", json={"instances": [PARAMS]}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["seeds"] == [31] and prediction["format"] == "png"
    assert base64.b64decode(prediction["images"][0]) == direct_png(uncached, PARAMS)


def test_instances_run_together_and_each_equals_its_solo_image(uncached: LocalService) -> None:
    instances = [PARAMS, {**PARAMS, "seed": 32, "scheduler": "ddim", "steps": 7}]
    answer = httpx.post(
        uncached.url + "/v1/models/sd-embedded:predict", json={"instances": instances}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["seeds"] for p in predictions] == [[31], [32]]
    for prediction, instance in zip(predictions, instances, strict=True):
        together = pixels(base64.b64decode(prediction["images"][0]))
        assert max_pixel_difference(together, pixels(direct_png(uncached, instance))) <= 1


def direct_png(service: LocalService, fields: dict[str, object]) -> bytes:
    answer = httpx.post(
        service.url + "/v1/generate", json=fields, headers={"Accept": "image/png"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def test_kserve_v1_errors(local: LocalService) -> None:
    unknown = httpx.post(local.url + "/v1/models/other:predict", json={"instances": [PARAMS]})
    assert unknown.status_code == 404 and "other" in unknown.json()["error"]["message"]
    assert httpx.get(local.url + "/v1/models/other").status_code == 404
    bad = httpx.post(
        local.url + "/v1/models/sd-embedded:predict",
        json={"instances": [PARAMS, {"prompt": "x", "steps": 0}]},
        timeout=60,
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "instances[1].steps"
    typed = httpx.post(
        local.url + "/v1/models/sd-embedded:predict",
        json={"instances": [{"prompt": "x", "seed": "abc"}]},
    )
    assert typed.status_code == 422 and typed.json()["error"]["field"] == "instances[0].seed"
    empty = httpx.post(local.url + "/v1/models/sd-embedded:predict", json={"instances": []})
    assert empty.status_code == 422 and empty.json()["error"]["field"] == "instances"
    assert httpx.post(local.url + "/v1/models/sd-embedded:predict", json=[1]).status_code == 400
