"""KServe's v1 protocol: `GET /v1/models`, `GET /v1/models/{model}` and
`POST /v1/models/{model}:predict` with `{"instances": [{"prompt": ...}]}`, a prediction each."""

from __future__ import annotations

import base64
import functools

from fastapi import APIRouter

from serving.dataplane.service import all_or_none
from serving.errors import fields_renamed
from serving.http.dependencies import ContextDep, DataPlaneDep
from serving.http.models import (
    ERRORS,
    V1Models,
    V1ModelStatus,
    V1Prediction,
    V1PredictRequest,
    V1PredictResponse,
)

router = APIRouter(tags=["KServe v1"])


@router.get("/v1/models")
async def models(data_plane: DataPlaneDep) -> V1Models:
    """The served models, the default first."""
    return V1Models(models=[model.name for model in data_plane.models])


@router.get("/v1/models/{model}", responses=ERRORS)
async def model_status(model: str, data_plane: DataPlaneDep) -> V1ModelStatus:
    parameters = data_plane.describe_model(model)
    return V1ModelStatus(name=model, ready=await data_plane.ready(), parameters=parameters)


@router.post("/v1/models/{model}:predict", responses=ERRORS)
async def predict(
    model: str, body: V1PredictRequest, data_plane: DataPlaneDep, context: ContextDep
) -> V1PredictResponse:
    data_plane.resolve_model(model)  # NotFound unless served (a version too: name@version)
    prepared = []
    for index, instance in enumerate(body.instances):  # every instance checked before any runs
        with fields_renamed(functools.partial("instances[{}].{}".format, index)):
            instance = instance.model_copy(update={"model": model})
            instance = await data_plane.with_stored_pictures(instance)
            prepared.append(data_plane.prepare(instance, context))
    results = await all_or_none([data_plane.run(item, context) for item in prepared])
    return V1PredictResponse(
        predictions=[
            V1Prediction(
                images=[base64.b64encode(image.data).decode("ascii") for image in result.images],
                seeds=[image.seed for image in result.images],
                format=result.request.output_format,
                model_version=result.request.model_version,
            )
            for result in results
        ]
    )
