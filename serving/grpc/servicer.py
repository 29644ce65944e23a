"""What Ray Serve's gRPC proxy registers (`grpc_options.grpc_servicer_functions`)."""

from __future__ import annotations

from typing import Any

from serving.grpc.protos import pb_grpc

# The import path the proxy is given; the module import also installs the message alias.
SERVICER_FUNCTION = "serving.grpc.servicer.add_inference_service"


def add_inference_service(servicer: Any, server: Any) -> None:
    """Register `inference.GRPCInferenceService`; Ray routes each method to the ingress
    deployment's method of the same name."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
