"""`make reliability`'s fairness figure, smaller: a light API key's requests beside another key's
flood wait less than the same requests sent as the flood's own (first come, first served)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.fairness import KEY_FILE, markdown, measure
from tests.helpers.local_service import LocalService, local_service


@pytest.fixture(scope="module")
def two_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(KEY_FILE)
    # One request denoised at a time: this CPU's throughput does not grow with the batch.
    with local_service(None, api_keys_file=keys, unet={"max_batch_size": 1}) as service:
        yield service


def test_a_light_key_beside_a_flood_waits_less_than_as_part_of_it(two_keys: LocalService) -> None:
    run = measure(two_keys.url, requests=4, heavy_clients=6, steps=4)
    light = run["light"]
    print(markdown({"1": run}))
    assert light["fair"]["p95_s"] < light["one_client"]["p95_s"]
    for statuses in run["heavy_statuses"].values():
        assert statuses.get(200, 0) > 0 and set(statuses) <= {200, 503}
    assert two_keys.meter.observations(
        "sd_client_request_seconds", client="light", priority="interactive"
    )
