"""API keys on a real FastAPI app with the service's middleware and error mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.apikeys import is_authorized, load_api_keys
from serving.http.auth import install_api_key_auth
from serving.http.errors import install_error_handlers


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    keys_file = tmp_path / "keys"
    keys_file.write_text("first-key\n\n  second-key  \n")
    app = FastAPI()
    install_error_handlers(app)
    install_api_key_auth(app, load_api_keys(keys_file))

    @app.post("/v1/generate")
    async def generate() -> dict[str, bool]:
        return {"generated": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return TestClient(app)


@pytest.mark.parametrize("key", ["first-key", "second-key"])
def test_each_key_is_accepted(client: TestClient, key: str) -> None:
    answer = client.post("/v1/generate", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200 and answer.json() == {"generated": True}


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer ", "Basic first-key", "first-key", "Bearer first-ke"]
)
def test_missing_or_wrong_keys_get_401_without_echoing_them(
    client: TestClient, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    answer = client.post("/v1/generate", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["error"]["code"] == "unauthenticated"
    assert "first-k" not in answer.text and "wrong" not in answer.text


def test_health_stays_open_for_probes(client: TestClient) -> None:
    assert client.get("/v2/health/ready").status_code == 200


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("\n \n")
    with pytest.raises(ValueError, match="no API key"):
        load_api_keys(tmp_path / "keys")


def test_an_empty_token_never_matches() -> None:
    assert not is_authorized("Bearer ", (b"",))
