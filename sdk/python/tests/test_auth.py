"""A standalone with authentication on (an API key and a rule): the client's bearer token,
the typed 401, and algorithms creating and reading child runs with their run token."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import Standalone, nexus_bin, start_standalone, stop

from nexus_sdk import NexusClient, RunRef, UnauthorizedError


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Standalone, str]]:
    new = subprocess.run(
        [str(nexus_bin()), "api-key", "new", "--name", "pytest", "--group", "team"],
        capture_output=True,
        text=True,
        check=True,
    )
    key = new.stdout.strip()
    hashed = subprocess.run(
        [str(nexus_bin()), "api-key", "hash"],
        input=key,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    auth = {
        "mode": "required",
        "api_keys": {"keys": [{"name": "pytest", "sha256": hashed, "groups": ["team"]}]},
        "rules": [
            {"groups": ["team"], "actions": ["submit", "read", "cancel"], "workgroups": ["*"]}
        ],
    }
    server = start_standalone(tmp_path_factory.mktemp("secured"), {"auth": auth})
    yield server, key
    stop(server)


def test_no_or_a_wrong_token_is_a_typed_401(secured: tuple[Standalone, str]) -> None:
    server, _ = secured
    run = RunRef("py-squares", str(uuid.uuid4()))
    with NexusClient(server.url) as anonymous, pytest.raises(UnauthorizedError) as e:
        anonymous.get(run)
    assert e.value.status == 401
    assert "Bearer" in e.value.message
    with NexusClient(server.url, token="nxk_wrong") as wrong, pytest.raises(UnauthorizedError):
        wrong.submit("py-squares", {"numbers": [1]})


def test_algorithms_create_children_with_their_run_token(secured: tuple[Standalone, str]) -> None:
    server, key = secured
    with NexusClient(server.url, token=key) as c:
        tree = c.submit("py-squares", {"numbers": list(range(1, 9)), "leaf": 2})
        probe = c.submit("sync-probe", {"mode": "child", "numbers": [5]})
        done = c.wait(tree, timeout=180)
        assert done.status == "COMPLETED", (done, server.log_tail())
        assert c.result_json(done) == {"sumOfSquares": 204, "runs": 7, "depth": 2}
        probed = c.wait(probe, timeout=180)
        assert probed.status == "COMPLETED", probed
        out = c.result_json(probed)
        assert out["childResult"]["sumOfSquares"] == 25
        assert out["children"] == [out["child"]]
