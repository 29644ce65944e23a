"""The v2 gRPC methods driven by Hypothesis: generated ModelInferRequest messages (known and
unknown models, input names, datatypes, shapes, typed and raw contents, parameters, requested
outputs) and the other v2 methods with generated names. A server may refuse a request with any
status but INTERNAL or UNKNOWN, and must stay up. `make fuzz` runs it beside schemathesis."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from serving.client.v2 import DECLARED_INPUTS
from serving.grpc.protos import pb, pb_grpc

DATATYPES = ["BYTES", "BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64"]
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# Prompts the demo model knows, or anything (a prompt is never an error for being odd).
PROMPTS = st.one_of(st.just(b"a red circle on a white background"), st.binary(max_size=300))


def _contents(datatype: str) -> st.SearchStrategy[pb.InferTensorContents]:
    numbers = st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)
    by_type: dict[str, st.SearchStrategy[Any]] = {
        "BYTES": st.lists(PROMPTS, max_size=3).map(lambda v: {"bytes_contents": v}),
        "BOOL": st.lists(st.booleans(), max_size=4).map(lambda v: {"bool_contents": v}),
        "INT32": numbers.map(lambda v: {"int_contents": v}),
        "INT64": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(
            lambda v: {"int64_contents": v}
        ),
        "FP32": st.lists(st.floats(width=32), max_size=4).map(lambda v: {"fp32_contents": v}),
        "FP64": st.lists(st.floats(), max_size=4).map(lambda v: {"fp64_contents": v}),
    }
    chosen = by_type.get(datatype, st.just({}))
    return st.one_of(chosen, *by_type.values()).map(lambda v: pb.InferTensorContents(**v))


@st.composite
def _tensor(draw: st.DrawFn) -> pb.ModelInferRequest.InferInputTensor:
    name = draw(st.one_of(st.sampled_from(sorted(DECLARED_INPUTS)), st.text(max_size=20)))
    datatype = draw(
        st.one_of(st.just(DECLARED_INPUTS.get(name, "BYTES")), st.sampled_from(DATATYPES))
    )
    return pb.ModelInferRequest.InferInputTensor(
        name=name,
        datatype=datatype,
        shape=draw(st.lists(st.integers(-2, 6), max_size=3)),
        contents=draw(_contents(datatype)),
    )


_PROMPT = pb.ModelInferRequest.InferInputTensor(
    name="prompt",
    datatype="BYTES",
    shape=[1],
    contents=pb.InferTensorContents(bytes_contents=[b"a red circle on a white background"]),
)
_PARAMETER = st.one_of(
    st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
    st.text(max_size=30).map(lambda v: pb.InferParameter(string_param=v)),
)


@st.composite
def infer_requests(draw: st.DrawFn, model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.one_of(st.just(model), st.text(max_size=20))),
        model_version=draw(st.one_of(st.just(""), st.text(max_size=5))),
        id=draw(st.text(max_size=10)),
        inputs=draw(
            st.one_of(
                st.just([_PROMPT]),  # valid: the generator reaches generation too
                st.lists(_tensor(), max_size=2).map(lambda extra: [_PROMPT, *extra]),
                st.lists(_tensor(), max_size=6),
            )
        ),
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=name)
            for name in draw(
                st.lists(
                    st.one_of(st.sampled_from(["image", "image_bytes", "seed"]), st.text()),
                    max_size=3,
                )
            )
        ],
        raw_input_contents=draw(st.lists(st.binary(max_size=64), max_size=3)),
    )
    keys = st.one_of(st.sampled_from(["output_format", "seed", "steps", "loras"]), st.text())
    for key, value in draw(st.dictionaries(keys, _PARAMETER, max_size=3)).items():
        request.parameters[key].CopyFrom(value)
    return request


def fuzz_grpc(target: str, model: str, examples: int, seed: int = 0) -> dict[str, Any]:
    """`examples` generated ModelInfer calls and as many metadata and readiness calls; the status
    codes seen per method, the calls that broke (INTERNAL/UNKNOWN), whether the server is up."""
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    codes: Counter[str] = Counter()
    broken: list[str] = []
    infers = 0

    def call(name: str, request: Any) -> None:
        try:
            getattr(stub, name)(request, timeout=60)
            codes[f"{name} OK"] += 1
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            codes[f"{name} {code.name}"] += 1
            if code in BROKEN:
                broken.append(f"{code.name}: {error.details()} for {request!r:.300}")  # type: ignore[attr-defined]

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=infer_requests(model), name=st.one_of(st.just(model), st.text(max_size=30)))
    def one(request: pb.ModelInferRequest, name: str) -> None:
        nonlocal infers
        infers += 1
        call("ModelInfer", request)
        call("ModelMetadata", pb.ModelMetadataRequest(name=name))
        call("ModelReady", pb.ModelReadyRequest(name=name))

    one()
    up = stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    channel.close()
    return {
        "cases": sum(codes.values()),
        "infer_cases": infers,
        "codes": dict(sorted(codes.items())),
        "broken": broken[:10],
        "broken_count": len(broken),
        "server_up": up,
    }
