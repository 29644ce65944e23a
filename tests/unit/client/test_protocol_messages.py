"""The client's own v2 messages: generated from the committed .proto without drift, on the wire
the same as kserve's, and importable without any server module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grpc_tools import protoc

from serving.client import open_inference_pb2 as ours
from serving.grpc.protos import pb as kserve

CLIENT = Path(__file__).resolve().parents[3] / "serving" / "client"


def test_the_generated_messages_match_the_proto(tmp_path: Path) -> None:
    status = protoc.main(
        [
            "protoc",
            f"-I{CLIENT}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(CLIENT / "open_inference.proto"),
        ]
    )
    assert status == 0
    for name in ("open_inference_pb2.py", "open_inference_pb2.pyi"):
        assert (tmp_path / name).read_text() == (CLIENT / name).read_text(), (
            f"{name} is stale: run `make protos`"
        )


def test_requests_and_answers_read_the_same_on_both_sides() -> None:
    request = ours.ModelInferRequest(model_name="m", id="1")
    tensor = request.inputs.add(name="prompt", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"a cat")
    request.inputs.add(name="steps", datatype="INT32", shape=[1]).contents.int_contents.append(9)
    request.outputs.add(name="image_bytes")
    request.parameters["output_format"].string_param = "webp"
    theirs = kserve.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].contents.bytes_contents == [b"a cat"]
    assert theirs.inputs[1].contents.int_contents == [9]
    assert theirs.parameters["output_format"].string_param == "webp"
    assert theirs.outputs[0].name == "image_bytes"

    answer = kserve.ModelInferResponse(model_name="m", raw_output_contents=[b"\x01\x00"])
    answer.outputs.add(name="seed", datatype="INT64", shape=[1])
    answer.parameters["cached"].bool_param = True
    read = ours.ModelInferResponse.FromString(answer.SerializeToString())
    assert read.raw_output_contents == [b"\x01\x00"] and read.outputs[0].datatype == "INT64"
    assert read.parameters["cached"].bool_param is True


def test_importing_the_client_loads_no_server_code() -> None:
    probe = (
        "import sys, serving.client\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('kserve', 'ray', 'torch')\n"
        "          or (m.startswith('serving.') and not m.startswith('serving.client'))]\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
