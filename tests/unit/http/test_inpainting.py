"""Inpainting: `image` + `mask` answer the image StableDiffusionInpaintPipeline makes, on a plain
UNet (the pipeline's masked blend after every step) and on a 9-channel inpainting UNet (mask and
masked picture as input channels), alone and batched with other requests; OpenAI's edits take
OpenAI's mask (transparent = edit), KServe v2 takes `input_mask` over REST and gRPC, each giving
the same bytes as /v1/generate; bad masks are refused naming the field."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from kserve.protocol.infer_type import InferInput
from PIL import Image

from serving.cli.main import main as cli_main
from serving.client import Client, GrpcClient
from serving.dataplane.request import GenerateParams
from serving.dataplane.service import PreparedRequest
from serving.engine.schedulers import SCHEDULER_CLASSES
from serving.models.embedded import export
from tests.helpers.images import as_uint8, max_pixel_difference, pixels
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.requests import first_image, generate
from tests.helpers.v2 import MODEL, grpc_infer, infer_request, rest_infer, run

PROMPT = "a red circle on a white background"
SAMPLING = {"steps": 6, "scheduler": "ddim", "guidance_scale": 7.5}


def picture(seed: int, size: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    data[size // 4 : size // 2, size // 4 : size // 2] = (200, 30, 30)
    return Image.fromarray(data)


def mask_image(size: int = 128, box: tuple[int, int, int, int] = (40, 30, 100, 90)) -> Image.Image:
    """White (repaint) inside `box` (left, top, right, bottom), black elsewhere."""
    data = np.zeros((size, size), dtype=np.uint8)
    left, top, right, bottom = box
    data[top:bottom, left:right] = 255
    return Image.fromarray(data, "L")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode("ascii")


def reference(model_dir: Path, image: Image.Image, mask: Image.Image, **args: object) -> np.ndarray:
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULER_CLASSES["ddim"].from_config(pipe.scheduler.config)
    output = pipe(
        PROMPT,
        image=image,
        mask_image=mask,
        strength=args.get("strength", 1.0),
        num_inference_steps=6,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(int(args["seed"])),  # type: ignore[call-overload]
        output_type="np",
    )
    return as_uint8(output.images[0])


@pytest.fixture(scope="module")
def inpaint_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("inpaint") / "model", "sd-inpaint")


@pytest.fixture(scope="module")
def inpainter(inpaint_model_dir: Path) -> Iterator[LocalService]:
    """A 9-channel inpainting model, served alone."""
    with local_service(inpaint_model_dir, result_cache_size=0) as service:
        yield service


def served(service: LocalService, seed: int, **fields: object) -> np.ndarray:
    body = generate(service.url, prompt=PROMPT, **SAMPLING, seed=seed, **fields)
    return first_image(body)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_a_plain_unet_inpaints_as_the_pipeline_does(
    uncached: LocalService, embedded_model_dir: Path, strength: float
) -> None:
    image, mask = picture(1), mask_image()
    result = served(uncached, 3, image=b64(image), mask=b64(mask), strength=strength)
    expected = reference(embedded_model_dir, image, mask, seed=3, strength=strength)
    assert max_pixel_difference(result, expected) <= 1
    kept = np.asarray(mask) == 0  # outside the mask, the picture shows through the blend
    plain = served(uncached, 3)
    assert np.abs(result.astype(int) - plain.astype(int))[kept].mean() > 10


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_an_inpainting_unet_inpaints_as_the_pipeline_does(
    inpainter: LocalService, inpaint_model_dir: Path, strength: float
) -> None:
    image, mask = picture(2), mask_image(box=(10, 60, 120, 110))
    result = served(inpainter, 5, image=b64(image), mask=b64(mask), strength=strength)
    expected = reference(inpaint_model_dir, image, mask, seed=5, strength=strength)
    assert max_pixel_difference(result, expected) <= 1


def test_inpaintings_batched_with_other_requests_equal_the_pipeline(
    uncached: LocalService, embedded_model_dir: Path
) -> None:
    cases = [
        (11, {"image": b64(picture(4)), "mask": b64(mask_image()), "strength": 0.8}),
        (12, {}),
        (13, {"image": b64(picture(5)), "strength": 0.5}),
        (14, {"image": b64(picture(6)), "mask": b64(mask_image(box=(0, 0, 64, 128)))}),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(lambda case: served(uncached, case[0], **case[1]), cases))
    for (seed, fields), result in zip(cases, results, strict=True):
        alone = served(uncached, seed, **fields)
        assert max_pixel_difference(result, alone) <= 1
    expected = reference(embedded_model_dir, picture(4), mask_image(), seed=11, strength=0.8)
    assert max_pixel_difference(results[0], expected) <= 1


def test_openai_edits_take_openais_mask_meaning(uncached: LocalService) -> None:
    """OpenAI: transparent pixels mark the area to edit; the same edit through /v1/generate
    takes diffusers' white-repaints mask: both give the same bytes."""
    image, mask = picture(7), mask_image()
    alpha = 255 - np.asarray(mask)  # transparent (0) where diffusers' mask is white
    openai_mask = Image.fromarray(np.dstack([np.zeros((128, 128, 3), np.uint8), alpha]), "RGBA")
    client = openai.OpenAI(base_url=uncached.url + "/v1", api_key="unused", max_retries=0)
    answer = client.images.edit(
        image=("picture.png", png(image), "image/png"),
        mask=("mask.png", png(openai_mask), "image/png"),
        prompt=PROMPT,
        response_format="b64_json",
        extra_body={**SAMPLING, "seed": 21},
    )
    edited = pixels(base64.b64decode(answer.data[0].b64_json or ""))  # type: ignore[index]
    direct = served(uncached, 21, image=b64(image), mask=b64(mask))
    assert max_pixel_difference(edited, direct) == 0
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.images.edit(
            image=("picture.png", png(image), "image/png"),
            mask=("mask.png", png(mask), "image/png"),  # no alpha channel
            prompt=PROMPT,
        )
    assert refused.value.body["param"] == "mask"  # type: ignore[index]


def test_kserve_v2_takes_input_mask_over_rest_and_grpc(uncached: LocalService) -> None:
    image, mask = picture(8), mask_image()
    params = {**SAMPLING, "seed": 31}
    direct = served(uncached, 31, image=b64(image), mask=b64(mask))
    over_grpc = infer_request(
        PROMPT, binary=True, **params, input_image=png(image), input_mask=png(mask)
    )
    answer = run(grpc_infer(uncached.grpc_target, over_grpc))
    assert (
        max_pixel_difference(pixels(answer.get_output_by_name("image_bytes").as_numpy()[0]), direct)
        == 0
    )
    over_rest = infer_request(PROMPT, **params, input_image=b64(image), input_mask=b64(mask))
    answer = run(rest_infer(uncached.url, over_rest))
    data = base64.b64decode(answer.get_output_by_name("image_bytes").data[0])
    assert max_pixel_difference(pixels(data), direct) == 0
    assert MODEL  # the default model takes both inputs


def test_a_queued_inpainting_carries_its_mask(local: LocalService) -> None:
    params = GenerateParams(prompt=PROMPT, image=b64(picture(9)), mask=b64(mask_image()))
    prepared = local.services.data_plane.prepare(params)
    assert prepared.request.strength == 1.0  # the inpainting pipelines' default
    queued = PreparedRequest.from_json(json.loads(json.dumps(prepared.to_json())))
    assert queued.request == prepared.request and queued.request.mask == prepared.request.mask


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"mask": b64(mask_image())}, "mask", "only with an `image`"),
        ({"image": b64(picture(1)), "mask": b64(mask_image(64))}, "mask",
         "is 64x64; the image is 128x128"),
        ({"image": b64(picture(1)), "mask": "bm90IGFuIGltYWdl"}, "mask", "readable"),
    ],
)  # fmt: skip
def test_bad_masks_are_refused_naming_the_field(
    local: LocalService, fields: dict[str, object], field: str, words: str
) -> None:
    answer = httpx.post(
        local.url + "/v1/generate", json={"prompt": PROMPT, "steps": 2, **fields}, timeout=60
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_an_inpainting_model_refuses_a_request_without_a_mask(inpainter: LocalService) -> None:
    answer = httpx.post(
        inpainter.url + "/v1/generate", json={"prompt": PROMPT, "steps": 2}, timeout=60
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "mask"
    status = httpx.get(inpainter.url + "/v1/models/sd-embedded", timeout=30).json()
    assert status["parameters"]["family"] == "sd-inpaint"


def test_the_python_client_and_the_cli_send_a_mask_file(
    uncached: LocalService, tmp_path: Path
) -> None:
    start, mask = tmp_path / "start.png", tmp_path / "mask.png"
    picture(12).save(start)
    mask_image().save(mask)
    direct = served(uncached, 41, image=b64(picture(12)), mask=b64(mask_image()))
    with Client(uncached.url) as client:
        result = client.generate(PROMPT, **SAMPLING, seed=41, image=start, mask=mask.read_bytes())
    with GrpcClient(uncached.grpc_target, model=MODEL) as grpc_client:
        over_grpc = grpc_client.generate(PROMPT, **SAMPLING, seed=41, image=start, mask=mask)
    for answer in (result, over_grpc):
        assert max_pixel_difference(pixels(answer.images[0].data), direct) == 0
    written = tmp_path / "inpainted.png"
    argv = ["edit", str(start), PROMPT, "--mask", str(mask), "--url", uncached.url]
    argv += ["-o", str(written), "--steps", "6", "--scheduler", "ddim", "--seed", "41"]
    argv += ["--guidance-scale", "7.5", "--no-progress"]
    assert cli_main(argv) == 0
    assert max_pixel_difference(pixels(written.read_bytes()), direct) == 0
    over_grpc_cli = ["--grpc", "--grpc-target", uncached.grpc_target, "--model", MODEL]
    assert cli_main([*argv, *over_grpc_cli]) == 0
    assert max_pixel_difference(pixels(written.read_bytes()), direct) == 0


@pytest.mark.parametrize("transport", ["REST JSON", "REST binary", "gRPC"])
def test_kserve_v2_takes_pictures_as_uint8_pixel_tensors(
    uncached: LocalService, transport: str
) -> None:
    """`input_image` as UINT8 [H, W, 3] and `input_mask` as UINT8 [H, W] (JSON data, the binary
    data extension, or gRPC's raw contents): the same edit as the PNG files give."""
    image, mask = picture(13), mask_image()
    direct = served(uncached, 51, image=b64(image), mask=b64(mask))
    binary = transport != "REST JSON"
    # kserve's REST client cannot read a binary BYTES output (it decodes it as text): the
    # binary REST answer is asked for as the UINT8 pixels instead.
    pixel_output = transport == "REST binary"
    outputs = {"output_format": None, "outputs": ["image", "seed"]} if pixel_output else {}
    request = infer_request(PROMPT, binary=binary, **SAMPLING, seed=51, **outputs)
    for name, pixels_of in (("input_image", np.asarray(image)), ("input_mask", np.asarray(mask))):
        tensor = InferInput(name, list(pixels_of.shape), "UINT8")
        tensor.set_data_from_numpy(pixels_of, binary_data=binary)
        request.inputs.append(tensor)
    if transport == "gRPC":
        answer = run(grpc_infer(uncached.grpc_target, request))
        data = answer.get_output_by_name("image_bytes").as_numpy()[0]
    elif pixel_output:
        answer = run(rest_infer(uncached.url, request))
        assert max_pixel_difference(answer.get_output_by_name("image").as_numpy()[0], direct) == 0
        return
    else:
        answer = run(rest_infer(uncached.url, request))
        data = base64.b64decode(answer.get_output_by_name("image_bytes").data[0])
    assert max_pixel_difference(pixels(data), direct) == 0
