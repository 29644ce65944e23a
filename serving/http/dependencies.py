"""What route handlers receive besides their body: the ingress's services (set once on the app by
create_http_app) and the call's RequestContext."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from serving.dataplane.request import RequestContext
from serving.dataplane.service import DataPlane
from serving.dataplane.services import Services


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


def data_plane(request: Request) -> DataPlane:
    return services(request).data_plane


def request_context(request: Request) -> RequestContext:
    """The deadline (X-Timeout-S), the key and the address of this call."""
    address = request.client.host if request.client else None
    return RequestContext.from_headers(request.headers, address)


ServicesDep = Annotated[Services, Depends(services)]
DataPlaneDep = Annotated[DataPlane, Depends(data_plane)]
ContextDep = Annotated[RequestContext, Depends(request_context)]
