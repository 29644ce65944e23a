"""kserve's generated v2 messages, importable under the name they were generated with.

kserve's stubs register their messages as top-level module `grpc_predict_v2_pb2`; Ray pickles
requests between its gRPC proxy and the replicas, and unpickling looks that module up by name.
Everything in this project imports the messages from here, so the alias always exists first."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

sys.modules.setdefault("grpc_predict_v2_pb2", pb)

SERVICE_NAME = "inference.GRPCInferenceService"


def parameter_value(parameters: Mapping[str, Any] | None, key: str) -> Any:
    """A v2 request/response parameter, from REST (a plain dict) or gRPC (InferParameter
    messages, a oneof per type); None when absent."""
    if not parameters or key not in parameters:
        return None
    value = parameters[key]
    if hasattr(value, "WhichOneof"):
        kind = value.WhichOneof("parameter_choice")
        return None if kind is None else getattr(value, kind)
    return value


__all__ = ["SERVICE_NAME", "parameter_value", "pb", "pb_grpc"]
