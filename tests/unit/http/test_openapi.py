"""The OpenAPI document: every REST route, its typed request body and its answers."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers.local_service import LocalService


def resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its $ref followed (typed bodies are components)."""
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return resolved(document, content["schema"])


def test_openapi_document_covers_every_rest_route(local: LocalService) -> None:
    document = httpx.get(local.url + "/openapi.json", timeout=30).json()
    paths = document["paths"]
    for path in (
        "/v1/generate",
        "/v1/images/generations",
        "/v1/models/{model}:predict",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/images/{name}",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
    ):
        assert path in paths, path
        for operation in paths[path].values():
            assert {"200", "202"} & set(operation["responses"]), path
    for path in (
        "/v1/generate",
        "/v1/images/generations",
        "/v1/models/{model}:predict",
        "/v1/jobs",
    ):
        assert body_schema(document, path)["properties"], path
        assert "422" in paths[path]["post"]["responses"]
    generate = body_schema(document, "/v1/generate")
    assert generate["required"] == ["prompt"]
    assert generate["additionalProperties"] is False  # unknown fields are refused
    assert "image/png" in paths["/v1/generate"]["post"]["responses"]["200"]["content"]
    assert "webhook_url" in body_schema(document, "/v1/jobs")["properties"]
    assert "requestBody" in paths["/v2/models/{model_name}/infer"]["post"]
    assert "/v2/repository/models/{model_name}/load" not in paths  # not served here


def test_a_wrong_method_answers_405_listing_every_method_the_path_takes(
    local: LocalService,
) -> None:
    """Paths that another route's pattern also matches (GET /v1/images/{name} matches
    /v1/images/generations) list their own methods, not only the first route's."""
    with local.client() as client:
        for method, path, allowed in [
            ("PUT", "/v1/images/generations", "POST"),  # not GET /v1/images/{name}
            ("OPTIONS", "/v1/jobs/abc", "DELETE, GET"),
            ("PUT", "/v1/models/sd-embedded:predict", "POST"),
            ("DELETE", "/v1/generate", "POST"),
        ]:
            answer = client.request(method, path)
            assert answer.status_code == 405, (method, path, answer.text)
            assert answer.headers["allow"] == allowed, (method, path)


def test_v2_errors_are_documented_in_the_v2_shape(local: LocalService) -> None:
    document = httpx.get(f"{local.url}/openapi.json").json()
    answer = document["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]["404"]
    reference = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert document["components"]["schemas"][reference]["properties"]["error"]["type"] == "string"
    wrong = httpx.post(f"{local.url}/v2/models/nope/infer", json={"inputs": []})
    assert wrong.status_code == 404 and isinstance(wrong.json()["error"], str)
