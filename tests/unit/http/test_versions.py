"""Model versions: a tuned version served as an adapter over its model's weights. A request
names one (`name@version`, the v2 version routes, gRPC's `model_version`) or gets the champion,
or the challenger for the canary's share; every answer says which version made it; the result
cache never answers one version's request with the other's images; unknown versions are 404."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from pydantic import ValidationError

from serving.cli.main import main as cli_main
from serving.client import Client, GrpcClient
from serving.models.loras import LoraLibrary
from serving.settings import Rollout
from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.loras import write_adapters
from tests.helpers.v2 import MODEL, grpc_infer, infer_request, run

PROMPT = "a red circle on a white background"
REQUEST = {"prompt": PROMPT, "seed": 5, "steps": 3, "scheduler": "ddim", "guidance_scale": 7.5}
CANARY_PERCENT = 30.0
ROLLOUT = {
    "versions": {"1": {}, "2": {"adapter": "style-a"}},
    "champion": "1",
    "challenger": "2",
    "canary_percent": CANARY_PERCENT,
}


@pytest.fixture(scope="module")
def library(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoraLibrary:
    return write_adapters(str(embedded_model_dir), tmp_path_factory.mktemp("versions"))


@pytest.fixture(scope="module")
def canary(embedded_model_dir: Path, library: LoraLibrary) -> Iterator[LocalService]:
    with local_service(
        embedded_model_dir, lora_dir=library.directory, rollout=ROLLOUT, result_cache_size=64
    ) as service:
        yield service


def png(service: LocalService, **fields: object) -> tuple[bytes, str | None]:
    """A raw PNG answer of /v1/generate and the version its header names."""
    answer = httpx.post(
        service.url + "/v1/generate",
        json={**REQUEST, **fields},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return answer.content, answer.headers.get("x-model-version")


def test_the_canary_share_gets_the_challenger_and_the_cache_keeps_versions_apart(
    canary: LocalService,
) -> None:
    champion, named = png(canary, model=f"{MODEL}@1")
    challenger, _ = png(canary, model=f"{MODEL}@2")
    assert named == "1"
    assert max_pixel_difference(pixels(champion), pixels(challenger)) > 10  # another model
    # The same determined request, many times: after each version's first, the result cache
    # answers; each answer must still be its own version's image.
    requests = 400
    seen: Counter[str | None] = Counter()
    with canary.client() as client:
        for _ in range(requests):
            answer = client.post("/v1/generate", json=REQUEST, headers={"Accept": "image/png"})
            assert answer.status_code == 200, answer.text
            version = answer.headers.get("x-model-version")
            seen[version] += 1
            assert answer.content == {"1": champion, "2": challenger}[str(version)], version
    assert set(seen) == {"1", "2"}
    share = seen["2"] / requests
    # Binomial(400, 0.3): standard deviation 2.3 points; 8 points is 3.5 of them.
    assert abs(share - CANARY_PERCENT / 100) < 0.08, seen
    assert canary.meter.value("sd_model_requests", model=MODEL, version="2", outcome="ok") > 0


def test_every_protocol_serves_the_named_version_and_says_which(
    canary: LocalService, library: LoraLibrary
) -> None:
    # Version 2 is version 1 with its adapter: the same image as applying it by hand.
    by_hand, version = png(canary, model=f"{MODEL}@1", loras=[{"name": "style-a"}])
    assert version == "1"
    expected, _ = png(canary, model=f"{MODEL}@2")
    assert max_pixel_difference(pixels(by_hand), pixels(expected)) == 0
    served: dict[str, bytes] = {}
    body = httpx.post(
        canary.url + "/v1/generate", json={**REQUEST, "model": f"{MODEL}@2"}, timeout=120
    ).json()
    assert body["model_version"] == "2" and body["parameters"]["model_version"] == "2"
    served["/v1/generate"] = base64.b64decode(body["images"][0]["b64_data"])
    client = openai.OpenAI(base_url=canary.url + "/v1", api_key="unused", max_retries=0)
    extra = {key: value for key, value in REQUEST.items() if key != "prompt"}
    answer = client.images.generate(
        prompt=PROMPT, model=f"{MODEL}@2", response_format="b64_json", extra_body=extra
    )
    assert answer.model_extra == {"model_version": "2"}
    served["openai"] = base64.b64decode(answer.data[0].b64_json or "")  # type: ignore[index]
    v1 = httpx.post(
        canary.url + f"/v1/models/{MODEL}@2:predict", json={"instances": [REQUEST]}, timeout=120
    )
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0]["model_version"] == "2"
    served["v1"] = base64.b64decode(v1.json()["predictions"][0]["images"][0])
    sampling = {key: value for key, value in REQUEST.items() if key != "prompt"}
    request = infer_request(PROMPT, binary=True, **sampling)
    request.model_version = "2"
    grpc_answer = run(grpc_infer(canary.grpc_target, request))
    assert grpc_answer.model_version == "2"
    served["v2 gRPC"] = grpc_answer.get_output_by_name("image_bytes").as_numpy()[0]
    rest = httpx.post(
        canary.url + f"/v2/models/{MODEL}/versions/2/infer",
        json=run_json(infer_request(PROMPT, **sampling)),
        timeout=120,
    )
    assert rest.status_code == 200, rest.text
    assert rest.json()["model_version"] == "2"
    served["v2 REST"] = base64.b64decode(rest.json()["outputs"][0]["data"][0])
    for protocol, data in served.items():
        assert max_pixel_difference(pixels(data), pixels(expected)) == 0, protocol
    # The plain v2 route is the canary's, and says which version answered.
    plain = httpx.post(
        canary.url + f"/v2/models/{MODEL}/infer",
        json=run_json(infer_request(PROMPT, **sampling)),
        timeout=120,
    )
    assert plain.status_code == 200 and plain.json()["model_version"] in ("1", "2"), plain.text


def run_json(request: object) -> dict[str, object]:
    """A kserve InferRequest as the REST JSON body its client sends."""
    body, _ = request.to_rest()  # type: ignore[attr-defined]
    return dict(body)


def test_the_model_lists_its_versions(canary: LocalService) -> None:
    metadata = httpx.get(canary.url + f"/v2/models/{MODEL}", timeout=30).json()
    assert metadata["versions"] == ["1", "2"]
    assert metadata["parameters"]["challenger"] == "2"
    assert metadata["parameters"]["canary_percent"] == CANARY_PERCENT
    version = httpx.get(canary.url + f"/v2/models/{MODEL}/versions/2", timeout=30)
    assert version.status_code == 200 and version.json()["name"] == MODEL
    ready = httpx.get(canary.url + f"/v2/models/{MODEL}/versions/2/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_an_unknown_version_is_not_found_naming_the_served_ones(canary: LocalService) -> None:
    answers = [
        httpx.post(
            canary.url + "/v1/generate", json={**REQUEST, "model": f"{MODEL}@7"}, timeout=30
        ),
        httpx.get(canary.url + f"/v2/models/{MODEL}/versions/7", timeout=30),
        httpx.post(
            canary.url + f"/v2/models/{MODEL}/versions/7/infer",
            json=run_json(infer_request(PROMPT, steps=2)),
            timeout=30,
        ),
    ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert "has no version '7'; it serves 1, 2" in answer.text, answer.text
    request = infer_request(PROMPT, steps=2)
    request.model_version = "7"
    with pytest.raises(Exception) as raised:
        run(grpc_infer(canary.grpc_target, request))
    assert isinstance(raised.value, grpc.aio.AioRpcError), raised.value
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no version '7'" in str(raised.value.details())
    clash = httpx.post(
        canary.url + "/v1/generate",
        json={**REQUEST, "model": f"{MODEL}@2", "loras": [{"name": "style-a"}]},
        timeout=30,
    )
    assert clash.status_code == 422 and clash.json()["error"]["field"] == "loras[0].name"


def test_a_version_whose_adapter_is_missing_is_refused_naming_model(
    embedded_model_dir: Path, library: LoraLibrary
) -> None:
    rollout = {"versions": {"1": {}, "3": {"adapter": "gone"}}}
    with local_service(embedded_model_dir, lora_dir=library.directory, rollout=rollout) as service:
        answer = httpx.post(
            service.url + "/v1/generate", json={**REQUEST, "model": f"{MODEL}@3"}, timeout=30
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["field"] == "model" and "no adapter 'gone'" in error["message"]
        # The version fails, and its metrics say so (its requests never reach the stages).
        failed = {"model": MODEL, "version": "3", "outcome": "invalid_argument"}
        assert service.meter.value("sd_model_requests", **failed) == 1
        # Unversioned requests still go to the champion.
        assert png(service)[1] == "1"


@pytest.mark.parametrize(
    ("rollout", "words"),
    [
        ({"versions": {"1": {}}, "challenger": "2"}, "challenger '2' is not a version"),
        ({"versions": {"1": {}, "2": {}}, "canary_percent": 5}, "needs a challenger"),
        ({"versions": {"1": {}, "2": {}}, "challenger": "2", "canary_percent": 101}, "100"),
        ({"versions": {"a/b": {}}}, "version name 'a/b'"),
    ],
)
def test_a_bad_rollout_is_refused_at_start(rollout: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Rollout.model_validate(rollout)


def test_the_clients_and_the_cli_ask_for_a_version_and_say_which_answered(
    canary: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampling = {key: value for key, value in REQUEST.items() if key != "prompt"}
    expected, _ = png(canary, model=f"{MODEL}@2")
    with Client(canary.url) as client:
        http = client.generate(PROMPT, model=f"{MODEL}@2", **sampling)
        with_progress = client.generate_with_progress(PROMPT, model=f"{MODEL}@2", **sampling)
    with GrpcClient(canary.grpc_target, model=f"{MODEL}@2") as grpc_client:
        over_grpc = grpc_client.generate(PROMPT, **sampling)
    for result in (http, with_progress, over_grpc):
        assert result.model_version == "2" and result.images[0].data == expected
    written = tmp_path / "v2.png"
    argv = ["generate", PROMPT, "--url", canary.url, "-o", str(written), "--no-progress"]
    argv += ["--model", f"{MODEL}@2", "--seed", "5", "--steps", "3", "--scheduler", "ddim"]
    assert cli_main([*argv, "--guidance-scale", "7.5"]) == 0
    assert written.read_bytes() == expected
    assert "version 2" in capsys.readouterr().out
