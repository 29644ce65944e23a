"""Image-to-image over HTTP: `/v1/generate` with `image` and `strength` answers the image that
StableDiffusionImg2ImgPipeline makes from the same picture, prompt and seed; bad inputs name the
field; the result cache tells pictures apart."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from serving.cli.main import main as cli_main
from serving.client import Client
from serving.client.v2 import DECLARED_INPUTS
from serving.dataplane.request import GenerateParams
from serving.dataplane.service import PreparedRequest
from serving.engine.schedulers import SCHEDULER_CLASSES
from tests.helpers.engine import Components
from tests.helpers.images import as_uint8, max_pixel_difference, pixels
from tests.helpers.local_service import LocalService
from tests.helpers.net import wait_until
from tests.helpers.requests import first_image, generate, job
from tests.helpers.v2 import (
    MODEL,
    PARAMS,
    PROMPT,
    grpc_infer,
    infer_request,
    reference_png,
    rest_infer,
    run,
)


def picture(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A picture with structure, `size` (width, height), not a multiple of the VAE factor."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (200, 30, 30)
    return Image.fromarray(pixels)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def reference(components: Components, image: Image.Image, **args: object) -> np.ndarray:
    pipe = StableDiffusionImg2ImgPipeline(**components.pipeline.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULER_CLASSES[str(args["scheduler"])].from_config(pipe.scheduler.config)
    if "width" in args:  # a diffusers user resizes the picture first, as its image processor does
        size = (int(args["width"]), int(args["height"]))  # type: ignore[call-overload]
        image = image.resize(size, Image.Resampling.LANCZOS)
    output = pipe(
        str(args["prompt"]),
        image=image,
        strength=args["strength"],
        num_inference_steps=args["steps"],
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(int(args["seed"])),  # type: ignore[call-overload]
        output_type="np",
    )
    return as_uint8(output.images[0])


@pytest.mark.parametrize("size", [None, (128, 64)])
def test_an_edit_equals_the_diffusers_image_to_image_pipeline(
    uncached: LocalService, components: Components, size: tuple[int, int] | None
) -> None:
    image = picture(3)
    args: dict[str, object] = {
        "prompt": "a red circle",
        "steps": 10,
        "seed": 9,
        "strength": 0.7,
        "scheduler": "euler_a",
    }
    if size is not None:  # resized to what the request names; else its own size, rounded down
        args |= {"width": size[0], "height": size[1]}
    body = generate(uncached.url, image=png_base64(image), **args)
    served = first_image(body)
    assert served.shape == ((80, 96, 3) if size is None else (64, 128, 3))
    assert body["parameters"]["strength"] == 0.7 and "image" not in body["parameters"]
    assert body["timings_ms"]["vae_encode"] > 0  # the picture's encoding, a stage of its own
    assert max_pixel_difference(served, reference(components, image, **args)) <= 1


def test_the_result_cache_tells_pictures_apart(local: LocalService) -> None:
    params = {"prompt": "a red circle", "steps": 4, "seed": 2, "strength": 0.5}
    first = generate(local.url, image=png_base64(picture(1)), **params)
    again = generate(local.url, image=png_base64(picture(1)), **params)
    other = generate(local.url, image=png_base64(picture(2)), **params)
    assert not first["cached"] and again["cached"] and not other["cached"]
    assert first["parameters"]["image_digest"] != other["parameters"]["image_digest"]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"image": "not base64!"}, "image", "base64"),
        ({"image": base64.b64encode(b"GIF89a....").decode()}, "image", "readable"),
        ({"image": png_base64(picture(1, (6000, 8)))}, "image", "the limit is 4096"),
        ({"image": png_base64(picture(1, (20, 20)))}, "image", "send width and height"),
        ({"image": png_base64(picture(1)), "strength": 0}, "strength", "above 0"),
        ({"image": png_base64(picture(1)), "strength": 1.5}, "strength", "at most 1"),
        ({"image": png_base64(picture(1)), "strength": 0.05, "steps": 10}, "strength", "none"),
        ({"strength": 0.5}, "strength", "only with an `image`"),
    ],
)
def test_bad_image_inputs_are_refused_naming_the_field(
    local: LocalService, fields: dict[str, object], field: str, words: str
) -> None:
    answer = httpx.post(
        local.url + "/v1/generate", json={"prompt": "x", "steps": 4, **fields}, timeout=60
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_a_queued_edit_carries_its_picture_and_counts_only_the_steps_it_runs(
    local: LocalService,
) -> None:
    params = GenerateParams(
        prompt="a red circle",
        steps=10,
        strength=0.6,
        scheduler="ddim",
        image=png_base64(picture(4)),
    )
    prepared = local.services.data_plane.prepare(params)
    assert prepared.denoising_steps == 6  # the schedule's last 60 %
    queued = PreparedRequest.from_json(json.loads(json.dumps(prepared.to_json())))
    assert queued.request.image == prepared.request.image and queued.request.image is not None
    assert queued.request == prepared.request


def test_an_edit_as_a_job_gives_the_image_the_synchronous_call_gives(
    uncached: LocalService,
) -> None:
    params = {"prompt": "a red circle", "steps": 6, "seed": 5, "strength": 0.5}
    image = png_base64(picture(6))
    now = first_image(generate(uncached.url, image=image, **params))
    created = httpx.post(uncached.url + "/v1/jobs", json={"image": image, **params}, timeout=30)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert wait_until(lambda: job(uncached.url, job_id)["status"] == "succeeded", timeout_s=60)
    url = job(uncached.url, job_id)["result"]["images"][0]["url"]
    assert max_pixel_difference(pixels(httpx.get(uncached.url + url).content), now) <= 1


def test_the_official_openai_sdk_edits_a_picture_as_the_generate_route_does(
    uncached: LocalService,
) -> None:
    buffer = io.BytesIO()
    picture(7).save(buffer, format="PNG")
    client = openai.OpenAI(base_url=uncached.url + "/v1", api_key="unused", max_retries=0)
    params = {"steps": 6, "seed": 12, "strength": 0.6}
    answer = client.images.edit(
        image=("picture.png", buffer.getvalue(), "image/png"),
        prompt="a red circle",
        n=1,
        response_format="b64_json",
        extra_body=params,
    )
    edited = pixels(base64.b64decode(answer.data[0].b64_json or ""))
    direct = generate(uncached.url, prompt="a red circle", image=png_base64(picture(7)), **params)
    assert max_pixel_difference(edited, first_image(direct)) <= 1
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.images.edit(
            image=("picture.png", buffer.getvalue(), "image/png"),
            prompt="a red circle",
            extra_body={"strength": 3},
        )
    assert refused.value.body["param"] == "strength"  # type: ignore[index]


def test_an_openai_mask_without_transparency_is_refused_naming_it(local: LocalService) -> None:
    """OpenAI's mask marks the area to edit by transparency: an opaque file cannot say it."""
    buffer = io.BytesIO()
    picture(7).save(buffer, format="PNG")
    files = {"image": ("p.png", buffer.getvalue(), "image/png")}
    files["mask"] = ("m.png", buffer.getvalue(), "image/png")
    answer = httpx.post(
        local.url + "/v1/images/edits", data={"prompt": "x"}, files=files, timeout=60
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["param"] == "mask" and "transparency" in error["message"]  # OpenAI's shape


def test_the_python_client_and_the_cli_send_a_picture_file(
    uncached: LocalService, tmp_path: Path
) -> None:
    path = tmp_path / "start.png"
    picture(9).save(path)
    params = {"steps": 5, "seed": 3, "strength": 0.6}
    direct = first_image(
        generate(uncached.url, prompt="a red circle", image=png_base64(picture(9)), **params)
    )
    with Client(uncached.url) as client:
        from_path = client.generate("a red circle", image=path, **params)
        with_progress = client.generate_with_progress(
            "a red circle", image=path.read_bytes(), **params
        )
    for result in (from_path, with_progress):
        assert max_pixel_difference(pixels(result.images[0].data), direct) <= 1
    written = tmp_path / "edited.png"
    argv = [
        "generate",
        "a red circle",
        "--url",
        uncached.url,
        "--image",
        str(path),
        "-o",
        str(written),
    ]
    argv += ["--strength", "0.6", "--steps", "5", "--seed", "3", "--no-progress"]
    assert cli_main(argv) == 0
    assert max_pixel_difference(pixels(written.read_bytes()), direct) <= 1


def test_kserve_v2_grpc_takes_the_pictures_bytes_as_input_image(uncached: LocalService) -> None:
    buffer = io.BytesIO()
    picture(10).save(buffer, format="PNG")
    direct = reference_png(uncached.url, image=png_base64(picture(10)), **PARAMS, strength=0.6)
    request = infer_request(PROMPT, binary=True, input_image=buffer.getvalue(), strength=0.6)
    response = run(grpc_infer(uncached.grpc_target, request))
    served = response.get_output_by_name("image_bytes").as_numpy()[0]
    assert max_pixel_difference(pixels(served), pixels(direct)) <= 1


def test_kserve_v2_rest_refuses_undecodable_binary_bytes_with_a_400(
    local: LocalService,
) -> None:
    """kserve's REST binary extension decodes BYTES as UTF-8: a picture's raw bytes there get a
    400 that says what to send instead (it was a 500 before)."""
    buffer = io.BytesIO()
    picture(10).save(buffer, format="PNG")
    request = infer_request(PROMPT, binary=True, input_image=buffer.getvalue())
    with pytest.raises(httpx.HTTPStatusError) as refused:
        run(rest_infer(local.url, request))
    assert refused.value.response.status_code == 400
    assert "base64 text" in refused.value.response.text


def test_kserve_v2_rest_takes_the_picture_as_base64_text(uncached: LocalService) -> None:
    text = png_base64(picture(10))
    direct = reference_png(uncached.url, image=text, **PARAMS, strength=0.6)
    body = {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [PROMPT]},
            {"name": "input_image", "datatype": "BYTES", "shape": [1], "data": [text]},
            {"name": "strength", "datatype": "FP32", "shape": [1], "data": [0.6]},
            *(
                {"name": k, "datatype": DECLARED_INPUTS[k], "shape": [1], "data": [v]}
                for k, v in PARAMS.items()
            ),
        ],
        "parameters": {"output_format": "png"},
    }
    answer = httpx.post(f"{uncached.url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    encoded = answer.json()["outputs"][0]["data"][0]
    assert max_pixel_difference(pixels(base64.b64decode(encoded)), pixels(direct)) <= 1


def test_kserve_v1_instances_take_image_and_strength(uncached: LocalService) -> None:
    fields = {"prompt": "a red circle", "steps": 5, "seed": 4, "strength": 0.6}
    image = png_base64(picture(11))
    direct = first_image(generate(uncached.url, image=image, **fields))
    answer = httpx.post(
        f"{uncached.url}/v1/models/{MODEL}:predict",
        json={"instances": [{"image": image, **fields}]},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    served = pixels(base64.b64decode(answer.json()["predictions"][0]["images"][0]))
    assert max_pixel_difference(served, direct) <= 1
    refused = httpx.post(
        f"{uncached.url}/v1/models/{MODEL}:predict",
        json={"instances": [{"image": image, **fields, "strength": 2}]},
        timeout=60,
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "instances[0].strength"


def png_declaring(width: int, height: int) -> bytes:
    """A one-bit grey PNG of `width` x `height` zeros: a few kB on the wire that would take
    width · height bytes (and more) to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("size", "words"),
    [((20_000, 20_000), "declares too many pixels"), ((6_000, 5_000), "is 6000x5000")],
)
def test_a_decompression_bomb_is_refused_from_its_header(
    local: LocalService, size: tuple[int, int], words: str
) -> None:
    bomb = png_declaring(*size)
    assert len(bomb) < 1 << 20  # small on the wire, hundreds of MB decoded
    for field in ("image", "mask"):
        fields = {"image": png_base64(picture(1)), field: base64.b64encode(bomb).decode()}
        answer = httpx.post(
            local.url + "/v1/generate", json={"prompt": "x", "steps": 2, **fields}, timeout=60
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["field"] == field and words in error["message"], error


def test_an_image_this_server_stored_is_an_input_by_its_url(uncached: LocalService) -> None:
    """A picture made here is edited by naming its URL; the server fetches no other URL."""
    made = generate(uncached.url, prompt="a red circle", steps=4, seed=3)
    url = made["images"][0]["url"]
    data = httpx.get(uncached.url + url, timeout=30).content
    params = {"prompt": "a blue circle", "steps": 5, "seed": 4, "strength": 0.6}
    by_url = first_image(generate(uncached.url, image=url, **params))
    by_bytes = first_image(generate(uncached.url, image=base64.b64encode(data).decode(), **params))
    assert max_pixel_difference(by_url, by_bytes) == 0
    for value, words in (
        ("https://example.com/cat.png", "other URLs are not fetched"),
        ("/v1/images/" + "0" * 40 + ".png", "does not have"),
    ):
        answer = httpx.post(
            uncached.url + "/v1/generate", json={"prompt": "x", "image": value}, timeout=60
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["field"] == "image" and words in error["message"], error
