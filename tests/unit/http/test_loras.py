"""LoRA adapters over every protocol: `GET /v1/loras` lists the library; a request's `loras`
give the image StableDiffusionPipeline gives with those adapters loaded, alone and while other
requests with other adapters share the UNet's batch; the same request through /v1/generate,
OpenAI's SDK, KServe v1 and v2 (REST and gRPC) gives the same bytes; bad adapters are refused
naming the field."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file

from serving.cli.main import main as cli_main
from serving.client import Client, GrpcClient
from serving.models.loras import LoraLibrary
from serving.models.random_loras import write_random_lora
from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.loras import lora_reference, write_adapters
from tests.helpers.requests import first_image, generate
from tests.helpers.v2 import MODEL, grpc_infer, infer_request, rest_infer, run

PROMPT = "a red circle on a white background"
STEPS = 6
SAMPLING = {"steps": STEPS, "scheduler": "ddim", "guidance_scale": 7.5}  # the reference's


@pytest.fixture(scope="module")
def library(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoraLibrary:
    directory = tmp_path_factory.mktemp("loras")
    library = write_adapters(str(embedded_model_dir), directory)
    for layout in ("diffusers", "kohya"):
        name = "with-text" if layout == "diffusers" else "with-text-kohya"
        write_random_lora(
            str(embedded_model_dir),
            directory / f"{name}.safetensors",
            seed=4,
            text_encoder=True,
            layout=layout,  # type: ignore[arg-type]
        )
    (directory / "broken.safetensors").write_bytes(b"\x00" * 64)
    # An SD 1.x adapter's cross-attention (text width 768), for a model of width 256.
    save_file(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (
                torch.zeros(4, 768)
            ),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (
                torch.zeros(32, 4)
            ),
        },
        str(directory / "for-sd1.safetensors"),
    )
    folder = directory / "folder-style"  # diffusers' folder layout: the folder names it
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").symlink_to(library.get("style-b").path)
    return library


@pytest.fixture(scope="module")
def adapted(embedded_model_dir: Path, library: LoraLibrary) -> Iterator[LocalService]:
    with local_service(
        embedded_model_dir, lora_dir=library.directory, result_cache_size=0
    ) as service:
        yield service


def reference(
    embedded_model_dir: Path,
    library: LoraLibrary,
    seed: int,
    loras: tuple[tuple[str, float], ...],
) -> object:
    return lora_reference(
        str(embedded_model_dir), library, PROMPT, seed=seed, loras=loras, steps=STEPS
    )


def as_field(loras: tuple[tuple[str, float], ...]) -> list[dict[str, object]]:
    return [{"name": name, "scale": scale} for name, scale in loras]


def test_the_library_lists_each_adapter_with_what_it_is(adapted: LocalService) -> None:
    answer = httpx.get(adapted.url + "/v1/loras", timeout=30)
    assert answer.status_code == 200
    listed = {entry["name"]: entry for entry in answer.json()["loras"]}
    assert set(listed) == {
        "style-a",
        "style-b",
        "style.c",
        "style-a-kohya",
        "with-text",
        "with-text-kohya",
        "broken",
        "for-sd1",
        "folder-style",
    }
    style = listed["style-a"]
    assert style["rank"] == 4 and style["layout"] == "diffusers" and style["size_bytes"] > 0
    assert style["models"] == [MODEL] and "error" not in style
    assert listed["style-a-kohya"]["layout"] == "kohya"
    assert listed["for-sd1"]["family"] == "sd1" and listed["for-sd1"]["models"] == []
    assert "not a readable safetensors" in listed["broken"]["error"]
    assert listed["with-text"]["text_encoder"] and "error" not in listed["with-text"]
    for path in (f"/v1/models/{MODEL}", f"/v2/models/{MODEL}"):  # each model's metadata
        parameters = httpx.get(adapted.url + path, timeout=30).json()["parameters"]
        assert "style-a" in parameters["loras"] and "broken" not in parameters["loras"], path


def test_requests_with_different_adapters_batched_together_equal_the_pipeline(
    adapted: LocalService, embedded_model_dir: Path, library: LoraLibrary
) -> None:
    cases = [
        (21, (("style-a", 0.9),)),
        (22, (("folder-style", 1.0),)),
        (23, ()),
        (24, (("style-a", -0.5), ("style.c", 1.2))),
        (25, (("with-text", 0.9), ("style-b", 0.5))),  # text-encoder weights too
    ]

    def served(case: tuple[int, tuple[tuple[str, float], ...]]) -> object:
        seed, loras = case
        body = generate(adapted.url, **SAMPLING, prompt=PROMPT, seed=seed, loras=as_field(loras))
        assert body["parameters"]["loras"] == [list(pair) for pair in loras]
        return first_image(body)

    with ThreadPoolExecutor(len(cases)) as pool:  # together: they share the UNet's batches
        images = list(pool.map(served, cases))
    for (seed, loras), image in zip(cases, images, strict=True):
        expected = reference(embedded_model_dir, library, seed, loras)
        assert max_pixel_difference(image, expected) <= 1, loras  # type: ignore[arg-type]
    plain = reference(embedded_model_dir, library, 21, ())
    assert max_pixel_difference(images[0], plain) > 10  # type: ignore[arg-type]


def test_text_encoder_weights_apply_to_the_prompt_and_their_kohya_layout_matches(
    adapted: LocalService, embedded_model_dir: Path, library: LoraLibrary
) -> None:
    images = {}
    for name in ("with-text", "with-text-kohya"):
        images[name] = served_image(adapted, 61, ((name, 0.8),))
    assert max_pixel_difference(images["with-text"], images["with-text-kohya"]) <= 1
    expected = reference(embedded_model_dir, library, 61, (("with-text", 0.8),))
    assert max_pixel_difference(images["with-text"], expected) <= 1
    # Its UNet weights alone would be another image: the prompt's encoding changed too.
    text_only = adapted.stages._text.encode_each([PROMPT, PROMPT], [(), (("with-text", 0.8),)])
    plain, adapted_text = text_only
    assert not isinstance(plain, Exception) and not isinstance(adapted_text, Exception)
    assert np.abs(plain.hidden - adapted_text.hidden).max() > 1e-3


def served_image(
    service: LocalService, seed: int, loras: tuple[tuple[str, float], ...]
) -> np.ndarray:
    body = generate(service.url, **SAMPLING, prompt=PROMPT, seed=seed, loras=as_field(loras))
    return first_image(body)


def test_every_protocol_gives_the_same_bytes_for_the_same_adapters(
    adapted: LocalService,
) -> None:
    loras = [{"name": "style-b", "scale": 0.7}]
    params = {**SAMPLING, "seed": 31, "output_format": "png"}
    direct = httpx.post(
        adapted.url + "/v1/generate",
        json={"prompt": PROMPT, **params, "loras": loras},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert direct.status_code == 200, direct.text
    served: dict[str, bytes] = {}
    client = openai.OpenAI(base_url=adapted.url + "/v1", api_key="unused", max_retries=0)
    answer = client.images.generate(
        prompt=PROMPT, response_format="b64_json", extra_body={**params, "loras": loras}
    )
    served["openai"] = base64.b64decode(answer.data[0].b64_json or "")  # type: ignore[index]
    v1 = httpx.post(
        adapted.url + f"/v1/models/{MODEL}:predict",
        json={"instances": [{"prompt": PROMPT, **params, "loras": loras}]},
        timeout=120,
    )
    assert v1.status_code == 200, v1.text
    served["v1"] = base64.b64decode(v1.json()["predictions"][0]["images"][0])
    request = infer_request(PROMPT, binary=True, **SAMPLING, seed=31)
    request.parameters["loras"] = json.dumps(loras)  # type: ignore[index]
    grpc_answer = run(grpc_infer(adapted.grpc_target, request))
    served["v2 gRPC"] = grpc_answer.get_output_by_name("image_bytes").as_numpy()[0]
    rest_request = infer_request(PROMPT, **SAMPLING, seed=31)
    rest_request.parameters["loras"] = json.dumps(loras)  # type: ignore[index]
    rest_answer = run(rest_infer(adapted.url, rest_request))
    served["v2 REST"] = base64.b64decode(rest_answer.get_output_by_name("image_bytes").data[0])
    for protocol, data in served.items():
        assert max_pixel_difference(pixels(data), pixels(direct.content)) == 0, protocol
    plain = generate(adapted.url, prompt=PROMPT, **params)
    assert max_pixel_difference(first_image(plain), pixels(direct.content)) > 10


@pytest.mark.parametrize(
    ("loras", "field", "words"),
    [
        ([{"name": "missing"}], "loras[0].name", "no adapter 'missing'; there are"),
        ([{"name": "broken"}], "loras[0].name", "not a readable safetensors"),
        ([{"name": "for-sd1"}], "loras[0].name", "is for sd1 (text width 768)"),
        ([{"name": "style-a", "scale": 2.5}], "loras[0].scale", "between -2 and 2"),
        ([{"name": "style-a"}, {"name": "style-a"}], "loras[1].name", "given twice"),
        ([{"name": name} for name in ("style-a", "style-b", "style.c", "folder-style", "x")],
         "loras", "the limit is 4"),
    ],
)  # fmt: skip
def test_bad_adapters_are_refused_naming_the_field(
    adapted: LocalService, loras: list[dict[str, object]], field: str, words: str
) -> None:
    answer = httpx.post(
        adapted.url + "/v1/generate",
        json={"prompt": PROMPT, "steps": 2, "loras": loras},
        timeout=60,
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_v2_names_the_parameter_and_refuses_malformed_json(adapted: LocalService) -> None:
    request = infer_request(PROMPT, steps=2)
    request.parameters["loras"] = '[{"name": "style-a", "scale": "strong"}]'  # type: ignore[index]
    with pytest.raises(httpx.HTTPStatusError) as refused:
        run(rest_infer(adapted.url, request))
    assert refused.value.response.status_code == 422
    assert "parameters.loras" in refused.value.response.text
    request.parameters["loras"] = json.dumps([{"name": "missing"}])  # type: ignore[index]
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        run(rest_infer(adapted.url, request))
    assert "parameters.loras[0].name" in unknown.value.response.text


def test_a_service_without_a_library_refuses_adapters(local: LocalService) -> None:
    assert httpx.get(local.url + "/v1/loras", timeout=30).json() == {"loras": []}
    answer = httpx.post(
        local.url + "/v1/generate",
        json={"prompt": PROMPT, "steps": 2, "loras": [{"name": "style-a"}]},
        timeout=60,
    )
    assert answer.status_code == 422
    assert "SD_LORA_DIR holds none" in answer.json()["error"]["message"]


def test_adapter_use_is_counted(adapted: LocalService) -> None:
    generate(adapted.url, prompt=PROMPT, steps=2, seed=3, loras=[{"name": "style.c"}])
    assert adapted.meter.value("sd_lora_requests", lora="style.c") >= 1
    assert adapted.meter.value("sd_lora_lookups", stage="unet", result="miss") >= 1


def test_the_python_clients_and_the_cli_send_adapters(
    adapted: LocalService, tmp_path: Path
) -> None:
    fields = {**SAMPLING, "seed": 51}
    direct = first_image(
        generate(adapted.url, prompt=PROMPT, **fields, loras=[{"name": "style-b", "scale": 0.7}])
    )
    with Client(adapted.url) as client:
        over_http = client.generate(PROMPT, **fields, loras=[("style-b", 0.7)])
    with GrpcClient(adapted.grpc_target, model=MODEL) as grpc_client:
        over_grpc = grpc_client.generate(PROMPT, **fields, loras={"style-b": 0.7})
    for result in (over_http, over_grpc):
        assert max_pixel_difference(pixels(result.images[0].data), direct) == 0
    written = tmp_path / "adapted.png"
    argv = ["generate", PROMPT, "--url", adapted.url, "-o", str(written), "--no-progress"]
    argv += ["--steps", "6", "--scheduler", "ddim", "--guidance-scale", "7.5", "--seed", "51"]
    assert cli_main([*argv, "--lora", "style-b:0.7"]) == 0
    assert max_pixel_difference(pixels(written.read_bytes()), direct) == 0
    assert cli_main([*argv, "--lora", "style-b:strong"]) == 2


def test_the_cli_edits_a_picture_with_an_adapter(adapted: LocalService, tmp_path: Path) -> None:
    start = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
        start
    )
    fields = {**SAMPLING, "seed": 52, "strength": 0.6}
    direct = generate(
        adapted.url,
        prompt=PROMPT,
        **fields,
        image=base64.b64encode(start.read_bytes()).decode("ascii"),
        loras=[{"name": "style-a", "scale": 0.8}],
    )
    written = tmp_path / "edited.png"
    argv = ["edit", str(start), PROMPT, "--url", adapted.url, "-o", str(written)]
    argv += ["--steps", "6", "--scheduler", "ddim", "--guidance-scale", "7.5", "--seed", "52"]
    argv += ["--strength", "0.6", "--lora", "style-a:0.8", "--no-progress"]
    assert cli_main(argv) == 0
    assert max_pixel_difference(pixels(written.read_bytes()), first_image(direct)) == 0


def test_an_sdxl_model_serves_its_adapters_as_its_pipeline_does(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """SDXL's UNet and first text encoder adapted, equal to StableDiffusionXLPipeline with the
    adapter loaded; an SD adapter does not fit its layers."""
    source = family_dirs["sdxl"]
    write_random_lora(str(source), tmp_path / "xl-style.safetensors", seed=7, text_encoder=True)
    library = LoraLibrary(tmp_path)
    with local_service(source, lora_dir=tmp_path, result_cache_size=0) as service:
        loras = (("xl-style", 0.8),)
        image = served_image(service, 71, loras)
        plain = served_image(service, 71, ())
    expected = lora_reference(
        str(source),
        library,
        PROMPT,
        seed=71,
        loras=loras,
        steps=STEPS,
        pipeline_class=StableDiffusionXLPipeline,
    )
    assert max_pixel_difference(image, expected) <= 1
    assert max_pixel_difference(image, plain) > 10
