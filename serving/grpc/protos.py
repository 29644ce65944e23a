"""kserve's generated v2 messages, importable under the name they were generated with.

kserve's stubs register their messages as top-level module `grpc_predict_v2_pb2`; Ray pickles
requests between its gRPC proxy and the replicas, and unpickling looks that module up by name.
The server imports the messages from here, so the alias (this project's one sys.modules
workaround) always exists first."""

from __future__ import annotations

import sys

from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

sys.modules.setdefault("grpc_predict_v2_pb2", pb)

__all__ = ["pb", "pb_grpc"]
