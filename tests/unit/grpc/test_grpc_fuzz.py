"""`make fuzz`'s gRPC half at a reduced size: Hypothesis-generated v2 messages against the real
grpc.aio servicer on the default model with tiny limits. Refusals are fine; INTERNAL or UNKNOWN
is a bug, and the server must stay up."""

from __future__ import annotations

from loadtest.grpc_fuzz import fuzz_grpc
from tests.helpers.local_service import LocalService

EXAMPLES = 150


def test_generated_v2_messages_never_break_the_server(tiny: LocalService) -> None:
    summary = fuzz_grpc(tiny.grpc_target, "sd-embedded", examples=EXAMPLES, seed=1)
    print(summary["codes"])  # the counts actually run
    assert summary["infer_cases"] == EXAMPLES and summary["cases"] == 3 * EXAMPLES
    assert summary["broken"] == [], summary["broken"]
    assert summary["server_up"]
    # The generator reaches both sides: refusals naming what is wrong, and images.
    codes = summary["codes"]
    assert codes.get("ModelInfer INVALID_ARGUMENT", 0) > 0 and codes.get("ModelInfer OK", 0) > 0
