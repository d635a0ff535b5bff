"""`--server URL`: `keyshift status`, `history` and `approvals` ask a real keyshift server
(uvicorn on a free port) with KEYSHIFT_TOKEN and print the same tables as embedded mode;
a problem from the server is the usual one `error:` line and exit code."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from keyshift.api import create_app
from keyshift.client import Client, ServerRefused, ServerUnreachable
from keyshift.service import identities
from keyshift.store.store import Store
from tests.conftest import Cli
from tests.engine.test_governance import TWO_OF_THREE
from tests.engine.test_governance import _estate as governed_estate
from tests.helpers import rotations_of, write_estate
from tests.servers import free_port

# The client does not depend on the store's backend; SQLite keeps these fast.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    """A viewer's API token (the three commands need `credentials:read` only)."""


@pytest.fixture
def server(store: Store) -> Iterator[Server]:
    """`create_app` over the test's store, served by uvicorn on a free port, then stopped."""
    identities.add_principal(store, name="vera", kind="user", roles=["viewer"], actor="test")
    token = identities.create_token(store, "vera", name="cli", actor="test").token.reveal()
    port = free_port()
    config = uvicorn.Config(
        create_app(store), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", token)
    finally:
        running.should_exit = True
        thread.join(timeout=20)


def _remote(ks_env: dict[str, str], server: Server | None = None, token: str | None = None) -> Cli:
    """The CLI with KEYSHIFT_TOKEN (and KEYSHIFT_SERVER when `server` is given), and a
    KEYSHIFT_HOME of its own: an answer can only come from the server, not the store."""
    env = dict(ks_env)
    env["KEYSHIFT_HOME"] = str(Path(ks_env["KEYSHIFT_HOME"]).parent / "client-home")
    if token is not None:
        env["KEYSHIFT_TOKEN"] = token
    if server is not None:
        env["KEYSHIFT_SERVER"] = server.url
    return Cli(env)


def _estate_with_a_pending_approval(cli: Cli, tmp_path: Path) -> None:
    """api-key: one completed rotation, then one waiting for 2 of 3 approvers."""
    steps = (
        lambda: ("apply", "-f", str(write_estate(tmp_path))),
        lambda: ("rotate", "api-key", "--grace", "0s"),
        lambda: ("apply", "-f", str(governed_estate(tmp_path, policy=TWO_OF_THREE))),
        lambda: ("rotate", "api-key"),
    )
    for step in steps:  # each estate file is written just before it is applied
        result = cli(*step())
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [("status",), ("history", "api-key"), ("approvals",), ("approvals", "--all")],
    ids=["status", "history", "approvals", "approvals-all"],
)
def test_server_mode_prints_the_same_table_as_embedded_mode(
    cli: Cli,
    ks_env: dict[str, str],
    server: Server,
    store: Store,
    tmp_path: Path,
    args: tuple[str, ...],
) -> None:
    _estate_with_a_pending_approval(cli, tmp_path)
    embedded = cli(*args)
    assert embedded.exit_code == 0, embedded.output

    remote = _remote(ks_env, token=server.token)(*args, "--server", server.url)

    assert remote.exit_code == 0, remote.output
    assert remote.output == embedded.output
    assert "api-key" in remote.output
    assert not (tmp_path / "client-home").exists(), "the client opened a store of its own"
    assert server.token not in remote.output
    if args[0] == "history":
        assert all(r.id in remote.output for r in rotations_of(store, "api-key"))


def test_keyshift_server_and_token_from_the_environment(
    cli: Cli, ks_env: dict[str, str], server: Server, tmp_path: Path
) -> None:
    _estate_with_a_pending_approval(cli, tmp_path)
    embedded = cli("approvals")

    remote = _remote(ks_env, server, server.token)("approvals")

    assert remote.exit_code == 0, remote.output
    assert remote.output == embedded.output
    assert "0/2" in remote.output  # the pending request, as the server sees it


def test_a_problem_from_the_server_is_the_same_error_line_as_embedded(
    cli: Cli, ks_env: dict[str, str], server: Server
) -> None:
    embedded = cli("history", "nope")
    remote = _remote(ks_env, server, server.token)("history", "nope")
    assert (remote.exit_code, remote.output) == (1, embedded.output)
    assert remote.output == "error: no credential named nope\n"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, "error: an API token is required: send Authorization: Bearer <token>"),
        ("ks_not-a-token", "error: the bearer token is not a keyshift API token"),
    ],
    ids=["no-token", "bad-token"],
)
def test_a_missing_or_bad_token_is_one_line_naming_keyshift_token(
    ks_env: dict[str, str], server: Server, token: str | None, expected: str
) -> None:
    result = _remote(ks_env, token=token)("status", "--server", server.url)
    assert result.exit_code == 1
    assert result.output == f"{expected} (set KEYSHIFT_TOKEN to an API token for this server)\n"


def test_an_unreachable_server_is_one_line_and_exit_1(ks_env: dict[str, str], store: Store) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = _remote(ks_env, token="ks_x")("status", "--server", url)
    assert result.exit_code == 1
    assert result.output == f"error: cannot reach the keyshift server at {url} (ConnectError)\n"


def test_with_keyshift_server_set_an_embedded_only_command_changes_nothing(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0

    result = _remote(ks_env, server, server.token)("rotate", "api-key")

    assert result.exit_code == 1
    assert result.output.startswith("error: KEYSHIFT_SERVER is set, but this command runs only")
    assert rotations_of(store, "api-key") == []


def test_the_client_reads_problems_and_refuses_answers_that_are_not_the_api(store: Store) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer ks_t"
        if request.url.path == "/v1/credentials":
            return httpx.Response(502, text="<html>bad gateway</html>")
        if request.url.path == "/v1/approvals":
            return httpx.Response(200, json=[{"id": 1}])
        problem = {
            "code": "invalid-request",
            "detail": "1 problem(s)",
            "problems": [{"path": "name", "message": "too long"}],
        }
        return httpx.Response(
            422, json=problem, headers={"content-type": "application/problem+json"}
        )

    with Client("https://ks.example/", "ks_t", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ServerUnreachable, match="answered HTTP 502 without a problem document"):
            client.status_rows()
        with pytest.raises(ServerUnreachable, match="unexpected document"):
            client.approval_requests()
        with pytest.raises(ServerRefused) as refused:
            client.history_rows("x" * 200)
    assert (refused.value.status, refused.value.code) == (422, "invalid-request")
    assert str(refused.value) == "1 problem(s); name: too long"
