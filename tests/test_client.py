"""`--server URL`: `keyshift status`, `history` and `approvals` ask a real keyshift server
(uvicorn on a free port) with KEYSHIFT_TOKEN and print the same tables as embedded mode;
a problem from the server is the usual one `error:` line and exit code."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from keyshift.api import create_app
from keyshift.client import Client, ServerRefused, ServerUnreachable
from keyshift.service import approvals, identities
from keyshift.service import freezes as freezes_service
from keyshift.store.models import AuditEntry, VersionRow
from keyshift.store.store import Store
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli, run_subprocess
from tests.doubles.graph import GraphDouble
from tests.engine.test_governance import TWO_OF_THREE
from tests.engine.test_governance import _estate as governed_estate
from tests.helpers import (
    json_value,
    rotations_of,
    save_estate,
    steps,
    table_rows,
    versions,
    write_estate,
)
from tests.servers import free_port, serve
from tests.test_freezes import _estate as freeze_estate
from tests.test_no_secret_leaks import (
    LEAKING_CONSUMER,
    _file_action,
    _leaked_into,
    _leaking_command,
)

# The client does not depend on the store's backend; SQLite keeps these fast.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@dataclass(frozen=True)
class Server:
    url: str
    tokens: dict[str, str]
    """An API token per principal: vera (viewer), otto (operator), alice and bob
    (approvers, in the governed estate's group), ada (admin)."""

    @property
    def token(self) -> str:
        """The viewer's token (reading commands need `credentials:read` only)."""
        return self.tokens["vera"]


PRINCIPALS = {
    "vera": "viewer",
    "otto": "operator",
    "alice": "approver",
    "bob": "approver",
    "ada": "admin",
}


@pytest.fixture
def server(store: Store) -> Iterator[Server]:
    """`create_app` over the test's store, served by uvicorn on a free port, then stopped
    (after the rotations it runs in the background have ended)."""
    tokens = {}
    for name, role in PRINCIPALS.items():
        identities.add_principal(store, name=name, kind="user", roles=[role], actor="test")
        tokens[name] = identities.create_token(store, name, name="cli", actor="test").token.reveal()
    with serve(create_app(store)) as url:
        yield Server(url, tokens)


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


def _as(ks_env: dict[str, str], server: Server, principal: str) -> Cli:
    """The CLI in server mode (KEYSHIFT_SERVER) with `principal`'s token."""
    return _remote(ks_env, server, server.tokens[principal])


SAME_AS_EMBEDDED = [
    ("vera", ("status",)),
    ("vera", ("history", "api-key")),
    ("vera", ("approvals",)),
    ("vera", ("approvals", "--all")),
    ("vera", ("approvals", "show", "{request}")),
    ("vera", ("show", "{rotation}")),
    ("vera", ("impact", "api-key")),
    ("vera", ("impact", "api-key", "--json")),
    ("vera", ("alerts",)),
    ("vera", ("entra", "list")),
    ("vera", ("entra", "summary")),
    ("vera", ("entra", "report")),
    ("vera", ("foreign",)),
    ("vera", ("notifications",)),
    ("otto", ("preflight", "api-key")),
    ("otto", ("rotate", "api-key", "--dry-run")),
    ("otto", ("audit", "verify")),
    ("otto", ("audit", "export")),
    ("ada", ("users", "list")),
    ("ada", ("tokens", "list")),
    ("ada", ("roles", "list")),
    # -o json: the data behind the tables, from the same view types in both modes
    ("vera", ("status", "-o", "json")),
    ("vera", ("history", "api-key", "-o", "json")),
    ("vera", ("show", "{rotation}", "-o", "json")),
    ("vera", ("approvals", "--all", "-o", "json")),
    ("vera", ("approvals", "show", "{request}", "-o", "yaml")),
    ("vera", ("impact", "api-key", "-o", "json")),
    ("vera", ("alerts", "-o", "json")),
    ("vera", ("entra", "summary", "-o", "json")),
    ("vera", ("foreign", "-o", "json")),
    ("vera", ("notifications", "-o", "json")),
    ("otto", ("preflight", "api-key", "-o", "json")),
    ("ada", ("users", "list", "-o", "json")),
    ("ada", ("tokens", "list", "-o", "yaml")),
    ("ada", ("roles", "list", "-o", "json")),
]


@pytest.mark.parametrize(
    ("principal", "args"), SAME_AS_EMBEDDED, ids=[" ".join(a) for _, a in SAME_AS_EMBEDDED]
)
def test_server_mode_prints_the_same_as_embedded_mode(
    cli: Cli,
    ks_env: dict[str, str],
    server: Server,
    store: Store,
    tmp_path: Path,
    principal: str,
    args: tuple[str, ...],
) -> None:
    _estate_with_a_pending_approval(cli, tmp_path)
    rotation = rotations_of(store, "api-key")[0].id
    request = approvals.requests(store)[0].id
    args = tuple(a.format(rotation=rotation, request=request) for a in args)

    # The server first: it marks its token used, which `tokens list` then shows in both.
    remote = _remote(ks_env, token=server.tokens[principal])(*args, "--server", server.url)
    embedded = cli(*args)

    assert (remote.exit_code, remote.output) == (embedded.exit_code, embedded.output)
    assert remote.exit_code == 0, remote.output
    assert not (tmp_path / "client-home").exists(), "the client opened a store of its own"
    assert all(token not in remote.output for token in server.tokens.values())
    if args[0] == "history":
        assert all(r.id in remote.output for r in rotations_of(store, "api-key"))


def test_status_pages_by_cursor_alike_from_the_server_and_the_store(
    cli: Cli, ks_env: dict[str, str], server: Server, tmp_path: Path
) -> None:
    """`status --limit N` prints a page and, on stderr, the command for the next; both
    modes page alike (the server through `Link: rel="next"`) and together list every
    credential once."""
    credentials = [
        {"name": f"svc-{i}", "owner": "team", "provider": {"type": "random"}, "actions": []}
        for i in range(5)
    ]
    applied = cli("apply", "-f", str(save_estate(tmp_path, {"credentials": credentials})))
    assert applied.exit_code == 0, applied.output
    remote = _as(ks_env, server, "vera")
    for mode in (cli, remote):
        seen: list[str] = []
        args: tuple[str, ...] = ("status", "--limit", "2", "-o", "json")
        while True:
            result = mode(*args)
            assert result.exit_code == 0, result.output
            seen += [row["credential"] for row in json.loads(result.stdout)]
            more = result.stderr
            if not more:
                break
            assert more.startswith("more: keyshift status --limit 2 --cursor ")
            args = (*more.split()[2:], "-o", "json")
        assert seen == [f"svc-{i}" for i in range(5)]
    first = cli("status", "--limit", "2")
    assert first.output == remote("status", "--limit", "2").output
    bad = remote("status", "--limit", "2", "--cursor", "!!")
    assert (bad.exit_code, bad.output) == (1, cli("status", "--cursor", "!!").output)
    assert "cursor" in bad.output


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


@pytest.mark.parametrize(
    "args",
    [("status",), ("rotate", "api-key"), ("show", "abc123"), ("audit", "verify"), ("resume",)],
    ids=" ".join,
)
def test_an_unreachable_server_is_one_line_and_exit_1(
    ks_env: dict[str, str], store: Store, args: tuple[str, ...]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = _remote(ks_env, token="ks_x")(*args, "--server", url)
    assert result.exit_code == 1
    assert result.output == f"error: cannot reach the keyshift server at {url} (ConnectError)\n"


def test_a_role_lacking_the_permission_is_one_line_and_changes_nothing(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0

    result = _as(ks_env, server, "vera")("rotate", "api-key")

    assert (result.exit_code, result.output) == (
        1,
        "error: vera lacks the permission rotations:run\n",
    )
    assert rotations_of(store, "api-key") == []


EMBEDDED_ONLY = [
    ("worker", "--once"),
    ("keys", "rotate-master"),
    ("init",),
    ("demo", "--dir", "{tmp}/demo"),
]


@pytest.mark.parametrize("args", EMBEDDED_ONLY, ids=[a[0] for a in EMBEDDED_ONLY])
def test_with_keyshift_server_set_an_embedded_only_command_refuses(
    ks_env: dict[str, str], server: Server, tmp_path: Path, args: tuple[str, ...]
) -> None:
    args = tuple(a.format(tmp=tmp_path) for a in args)

    result = _as(ks_env, server, "ada")(*args)

    assert result.exit_code == 1
    assert result.output.startswith("error: KEYSHIFT_SERVER is set, but this command runs only")
    assert not (tmp_path / "client-home").exists()
    assert not (tmp_path / "demo").exists()


def test_with_keyshift_server_set_serve_refuses_instead_of_serving_a_local_store(
    ks_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**ks_env, "KEYSHIFT_SERVER": "http://127.0.0.1:9"}
    result = run_subprocess(["serve", "--port", str(free_port())], env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: KEYSHIFT_SERVER is set, but this command runs only")


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
    assert refused.value.problems == [("name", "too long")]


# --- rotations at the server ------------------------------------------------------------

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STEP_LINE = re.compile(r"^  (✓|✗|·) (\S+)\s+\S+ (?:ms|s|m|h)\b(.*)$")


def _shape(output: str) -> list[str]:
    """The output with ids as ID and each step line as its mark and step (durations and
    times differ between two runs)."""
    lines = []
    for line in UUID.sub("ID", output).splitlines():
        step = STEP_LINE.match(line)
        lines.append(f"{step.group(1)} {step.group(2)}{step.group(3)}" if step else line)
    return lines


def _printed_steps(output: str) -> list[str]:
    return [m.group(2) for line in output.splitlines() if (m := STEP_LINE.match(line))]


def test_rotate_at_the_server_follows_the_run_step_by_step_like_an_embedded_run(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    assert cli("rotate", "api-key").exit_code == 0  # the first version; now one to replace

    remote = _as(ks_env, server, "otto")("rotate", "api-key", "--grace", "0s")
    embedded = cli("rotate", "api-key", "--grace", "0s")

    assert remote.exit_code == embedded.exit_code == 0, remote.output
    _, at_server, here = rotations_of(store, "api-key")
    assert (at_server.state, at_server.requested_by) == ("completed", "otto")
    assert remote.output.splitlines()[0] == f"Rotating api-key (rotation {at_server.id})"
    assert remote.output.splitlines()[-1] == f"api-key: rotation {at_server.id} completed"
    # Every step the server ran is printed once, in order, as it ended.
    assert _printed_steps(remote.output) == [s.name for s in steps(store, at_server.id)]
    assert "revoking" in _printed_steps(remote.output)
    assert _printed_steps(remote.output) == [s.name for s in steps(store, here.id)]
    assert _shape(remote.output) == _shape(embedded.output)


def test_rotate_no_wait_prints_the_rotation_id_and_returns(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0

    result = _as(ks_env, server, "otto")("rotate", "api-key", "--no-wait")

    assert result.exit_code == 0, result.output
    (rotation,) = rotations_of(store, "api-key")
    assert result.output == (
        f"Rotating api-key (rotation {rotation.id})\n"
        f"  it runs at the server; `keyshift show {rotation.id}` shows its steps\n"
    )
    # Following it afterwards shows where it rests (the policy's 1h grace period).
    followed = _as(ks_env, server, "vera")("show", rotation.id)
    assert followed.exit_code == 0, followed.output
    assert rotation.id in followed.output


def test_no_wait_without_a_server_is_a_bad_option(cli: Cli, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    result = cli("rotate", "api-key", "--no-wait")
    assert result.exit_code == 2
    assert result.output.startswith("error: --no-wait: only with --server")


def _pending_request(store: Store) -> approvals.ApprovalView:
    (pending,) = approvals.requests(store)
    return pending


def test_approve_and_reject_at_the_server_round_trip(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    policy = governed_estate(tmp_path, policy=TWO_OF_THREE)
    assert _as(ks_env, server, "otto")("apply", "-f", str(policy)).exit_code == 0

    requested = _as(ks_env, server, "otto")("rotate", "api-key", "--grace", "0s")

    assert requested.exit_code == 0, requested.output
    request = _pending_request(store)
    assert f"waiting for approval: request {request.id[:8]} needs 2" in requested.output
    assert versions(store, "api-key") == [], "nothing is created before approval"

    refused = _as(ks_env, server, "otto")("approve", request.id[:8])
    assert refused.exit_code == 1
    assert refused.output.startswith("error: otto ")
    assert len(refused.output.splitlines()) == 1

    one = _as(ks_env, server, "alice")("approve", request.id[:8], "--comment", "looks right")
    assert one.exit_code == 0, one.output
    assert _printed_steps(one.output) == []
    assert "waiting for approval" in one.output
    assert _pending_request(store).approvals == ["alice"]

    (rotation,) = rotations_of(store, "api-key")
    before = len(steps(store, rotation.id))
    two = _as(ks_env, server, "bob")("approve", request.id)
    assert two.exit_code == 0, two.output
    assert two.output.splitlines()[-1] == f"api-key: rotation {rotation.id} completed"
    # Printed: each step that ran after the decision, once, in order.
    ran = [s.name for s in steps(store, rotation.id)[before:]]
    assert "creating" in ran
    assert _printed_steps(two.output) == ran
    assert len(versions(store, "api-key")) == 1

    # A second rotation, rejected: it fails with nothing changed, exit 1 as embedded.
    again = _as(ks_env, server, "otto")("rotate", "api-key")
    assert again.exit_code == 0, again.output
    second = _pending_request(store)
    rejected = _as(ks_env, server, "alice")("reject", second.id[:8], "--comment", "not now")
    assert rejected.exit_code == 1, rejected.output
    last = rotations_of(store, "api-key")[-1]
    assert last.state == "failed"
    assert f"api-key: rotation {last.id} failed" in rejected.output
    assert len(versions(store, "api-key")) == 1


def test_resume_at_the_server_prints_what_an_embedded_resume_prints(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    nothing = _as(ks_env, server, "otto")("resume")
    assert (nothing.exit_code, nothing.output) == (0, "No unfinished rotations.\n")
    assert cli("rotate", "api-key").exit_code == 0
    assert _as(ks_env, server, "otto")("rotate", "api-key").exit_code == 0  # into its 1h grace

    remote = _as(ks_env, server, "otto")("resume")
    embedded = cli("resume")

    assert remote.exit_code == embedded.exit_code == 0, remote.output
    rotation = rotations_of(store, "api-key")[-1]
    assert rotation.state == "grace"
    assert f"api-key: rotation {rotation.id} grace" in remote.output
    assert "old version stays valid until" in remote.output
    assert _shape(remote.output) == _shape(embedded.output)


def test_rollback_at_the_server_puts_the_old_value_back_and_refuses_a_second_time(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    assert cli("rotate", "api-key", "--grace", "0s").exit_code == 0
    assert cli("rotate", "api-key").exit_code == 0  # into its 1h grace
    old, _new = versions(store, "api-key")
    rotation = rotations_of(store, "api-key")[-1]
    viewer = _as(ks_env, server, "vera")("rollback", rotation.id[:8], "--reason", "bad key")
    assert viewer.exit_code == 1
    assert "rotations:run" in viewer.output
    assert rotations_of(store, "api-key")[-1].state == "grace", "a refusal changes nothing"

    done = _as(ks_env, server, "otto")("rollback", rotation.id[:8], "--reason", "bad key")

    assert done.exit_code == 0, done.output
    assert f"api-key: rotation {rotation.id} rolled_back" in done.output
    assert json_value(tmp_path / "app.json") == store.reveal(old).reveal()
    again = _as(ks_env, server, "otto")("rollback", rotation.id, "--reason", "bad key")
    embedded = cli("rollback", rotation.id, "--reason", "bad key")
    assert again.exit_code == embedded.exit_code == 1
    assert again.output == embedded.output
    assert "already rolled back" in again.output


def test_a_refused_estate_file_at_the_server_is_exit_2_with_the_same_lines(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    estate = json.loads(write_estate(tmp_path).read_text())
    estate["credentials"][0]["provider"] = {"type": "nope"}
    estate["credentials"][0]["policy"]["grace_period"] = "soon"
    bad = save_estate(tmp_path, estate)

    for command in ("plan", "apply"):
        remote = _as(ks_env, server, "otto")(command, "-f", str(bad))
        embedded = cli(command, "-f", str(bad))
        assert (remote.exit_code, remote.output) == (2, embedded.output)
        assert embedded.exit_code == 2
        assert len(remote.output.splitlines()) >= 2, remote.output  # one line per problem
    assert "api-key" not in cli("status").output


def test_plan_and_apply_at_the_server_store_the_estate(
    cli: Cli, ks_env: dict[str, str], server: Server, tmp_path: Path
) -> None:
    estate = write_estate(tmp_path)
    embedded = cli("plan", "-f", str(estate))

    planned = _as(ks_env, server, "vera")("plan", "-f", str(estate))
    refused = _as(ks_env, server, "vera")("apply", "-f", str(estate))
    applied = _as(ks_env, server, "otto")("apply", "-f", str(estate))

    assert (planned.exit_code, planned.output) == (0, embedded.output)
    assert "credential" in planned.output
    assert (refused.exit_code, refused.output) == (
        1,
        "error: vera lacks the permission credentials:write\n",
    )
    assert applied.exit_code == 0, applied.output
    assert applied.output == embedded.output.replace("Plan:", "Applied:")
    assert cli("plan", "-f", str(estate)).output.startswith("No changes.")


def _tamper_with_a_step_entry(store: Store, rotation_id: str) -> int:
    with store.transaction() as s:
        entry = (
            s.execute(
                select(AuditEntry)
                .where(AuditEntry.action == "rotation.step")
                .where(AuditEntry.subject == f"rotation:{rotation_id}")
                .order_by(AuditEntry.seq)
            )
            .scalars()
            .first()
        )
        assert entry is not None
        seq, details = entry.seq, json.loads(entry.details)
    details["outcome"] = "failed"
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_entries SET details = :d WHERE seq = :s"),
            {"d": json.dumps(details, sort_keys=True, separators=(",", ":")), "s": seq},
        )
    return seq


def test_evidence_and_audit_at_the_server_verify_and_fail_with_exit_3_like_embedded(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    assert _as(ks_env, server, "otto")("rotate", "api-key", "--grace", "0s").exit_code == 0
    (rotation,) = rotations_of(store, "api-key")
    bundle_file = tmp_path / "evidence.json"

    exported = _as(ks_env, server, "otto")("evidence", rotation.id[:8], "-o", str(bundle_file))
    assert exported.exit_code == 0, exported.output
    assert exported.output.startswith(f"evidence of rotation {rotation.id} written to")
    bundle = json.loads(bundle_file.read_text())
    local = json.loads(cli("evidence", rotation.id).stdout)
    assert bundle["exported_by"] == "otto"
    strip = ("exported_at", "exported_by")
    assert {k: v for k, v in bundle.items() if k not in strip} == {
        k: v for k, v in local.items() if k not in strip
    }

    verified = _as(ks_env, server, "otto")("evidence", "verify", str(bundle_file))
    assert verified.exit_code == 0, verified.output
    assert verified.output == cli("evidence", "verify", str(bundle_file)).output

    seq = _tamper_with_a_step_entry(store, rotation.id)

    for args in (("evidence", "verify", str(bundle_file)), ("audit", "verify")):
        remote = _as(ks_env, server, "otto")(*args)
        embedded = cli(*args)
        assert (remote.exit_code, remote.output) == (3, embedded.output), args
        assert embedded.exit_code == 3
        assert f"audit entry {seq}" in remote.output


def test_users_and_tokens_at_the_server_round_trip(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    admin = _as(ks_env, server, "ada")

    added = admin("users", "add", "sam", "--role", "viewer", "--service-account")
    created = admin("tokens", "create", "sam", "--name", "ci", "--expires-in", "7d")

    assert added.output == "added service_account sam with roles viewer\n"
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("ks_")
    assert token not in created.stderr
    prefix = token[: token.index("_", 3)]
    assert f"API token {prefix} for sam" in created.stderr
    assert _remote(ks_env, server, token)("status").exit_code == 0
    assert "sam" in admin("users", "list").output
    assert prefix in admin("tokens", "list", "--principal", "sam").output
    assert admin("tokens", "list").output == cli("tokens", "list").output

    revoked = admin("tokens", "revoke", prefix)
    assert revoked.output == f"revoked {prefix} of sam\n"
    refused = _remote(ks_env, server, token)("status")
    assert refused.exit_code == 1
    assert f"API token {prefix} was revoked" in refused.output
    assert admin("users", "disable", "sam").output == "disabled sam\n"
    assert "sam" in [p.name for p in identities.list_principals(store) if p.disabled_at]

    not_admin = _as(ks_env, server, "otto")("users", "list")
    assert (not_admin.exit_code, not_admin.output) == (
        1,
        "error: otto lacks the permission admin\n",
    )


# --- Entra ID and integrations at the server -------------------------------------------


def test_entra_and_integration_commands_at_the_server_print_what_embedded_prints(
    cli: Cli,
    ks_env: dict[str, str],
    server: Server,
    graph: GraphDouble,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server runs in this process and reads keyshift's Entra secret from its env.
    monkeypatch.setenv(ADMIN_ENV, ADMIN_SECRET)
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    now = datetime.now(UTC).replace(microsecond=0)
    app = graph.add_application("payments-api")
    for days in (-3, 5, 60):
        graph.seed_password(
            app, f"due-{days}d", start=now - timedelta(days=10), end=now + timedelta(days=days)
        )
    estate = {
        "integrations": [{"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}]
    }
    assert cli("apply", "-f", str(save_estate(tmp_path, estate))).exit_code == 0

    refused = _as(ks_env, server, "vera")("entra", "sync")
    synced = _as(ks_env, server, "otto")("entra", "sync", "--integration", "contoso")

    assert (refused.exit_code, refused.output) == (
        1,
        "error: vera lacks the permission entra:write\n",
    )
    assert synced.exit_code == 0, synced.output
    assert table_rows(synced.output) == [["contoso", "1", "3", "4", "0", "0"]]
    for principal, args in [
        ("vera", ("entra", "list")),
        ("vera", ("entra", "list", "--state", "expired")),
        ("vera", ("entra", "summary", "--top", "2")),
        ("vera", ("entra", "report")),
        ("otto", ("integrations", "test", "contoso")),
    ]:
        remote = _as(ks_env, server, principal)(*args)
        embedded = cli(*args)
        assert (remote.exit_code, remote.output) == (embedded.exit_code, embedded.output), args
        assert remote.exit_code == 0, remote.output
    assert "due-5d" in _as(ks_env, server, "vera")("entra", "list").output


# --- no secret value in any output ------------------------------------------------------


def test_no_secret_value_or_token_reaches_the_output_of_server_mode(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    target = tmp_path / "app.json"
    outputs: dict[str, str] = {}
    delivered: set[str] = set()

    def run(principal: str, *args: str, exit_code: int = 0) -> None:
        result = _as(ks_env, server, principal)(*args)
        outputs[f"{principal}: {' '.join(args)}"] = result.output
        assert result.exit_code == exit_code, (args, result.output)

    def read_target() -> None:
        value = json_value(target)
        assert value is not None
        delivered.add(value)

    run("otto", "apply", "-f", str(write_estate(tmp_path, actions=[_file_action(target)])))
    run("otto", "rotate", "api-key")
    read_target()
    run("otto", "rotate", "api-key", "--grace", "0s")
    read_target()
    script = tmp_path / "leaking_consumer.py"
    script.write_text(LEAKING_CONSUMER, encoding="utf-8")
    failing = write_estate(tmp_path, actions=[_file_action(target), _leaking_command(script)])
    run("otto", "apply", "-f", str(failing))
    run("otto", "rotate", "api-key", "--grace", "0s", exit_code=1)  # rolled back, as embedded
    read_target()
    for rotation in rotations_of(store, "api-key"):
        run("vera", "show", rotation.id)
        run("otto", "evidence", rotation.id)
    for args in [("status",), ("history", "api-key"), ("impact", "api-key", "--json")]:
        run("vera", *args)
    run("otto", "audit", "export")
    run("otto", "audit", "verify")
    run("ada", "tokens", "list")

    assert [r.state for r in rotations_of(store, "api-key")] == [
        "completed",
        "completed",
        "rolled_back",
    ]
    assert "rolled_back" in outputs["otto: rotate api-key --grace 0s"]
    with store.transaction() as s:
        stored = {
            store.reveal(row).reveal()
            for row in s.execute(
                select(VersionRow).where(VersionRow.ciphertext.is_not(None))
            ).scalars()
        }
    values = stored | delivered
    assert len(values) == 3
    assert _leaked_into(outputs, values) == []
    # A token's `ks_<id>` prefix is public (`tokens list` shows it); the rest is the secret.
    token_secrets = {token.split("_", 2)[2] for token in server.tokens.values()}
    assert _leaked_into(outputs, token_secrets) == []


def test_approvals_show_takes_the_server_on_the_group_too(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path
) -> None:
    _estate_with_a_pending_approval(cli, tmp_path)
    request = approvals.requests(store)[0].id
    embedded = cli("approvals", "show", request[:8])

    remote = _remote(ks_env, token=server.token)(
        "approvals", "--server", server.url, "show", request[:8]
    )

    assert (remote.exit_code, remote.output) == (0, embedded.output)
    assert not (tmp_path / "client-home").exists(), "the client opened a store of its own"


@pytest.mark.parametrize("case", ["unknown credential", "refused by policy"])
def test_a_refused_rotation_at_the_server_is_the_same_line_and_exit_code_as_embedded(
    cli: Cli, ks_env: dict[str, str], server: Server, store: Store, tmp_path: Path, case: str
) -> None:
    name = "nope" if case == "unknown credential" else "api-key"
    assert cli("apply", "-f", str(governed_estate(tmp_path, owner=None))).exit_code == 0

    remote = _as(ks_env, server, "otto")("rotate", name)
    embedded = cli("rotate", name)

    assert (remote.exit_code, remote.output) == (1, embedded.output)
    assert embedded.exit_code == 1
    assert len(remote.output.splitlines()) == 1, remote.output
    assert rotations_of(store, "api-key") == []


def test_the_freeze_commands_work_at_a_server_as_on_the_local_store(
    server: Server, ks_env: dict[str, str], cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(freeze_estate(tmp_path))).exit_code == 0
    remote = _remote(ks_env, server, server.tokens["otto"])
    made = remote("freeze", "--owner", "team-a", "--reason", "migration", "--until", "2h")
    assert made.exit_code == 0, made.output
    [holding] = freezes_service.holding(store)
    assert (holding.what, holding.created_by) == ("owner team-a", "otto")
    listed = _remote(ks_env, server, server.tokens["vera"])("freezes", "-o", "json")
    assert [f["id"] for f in json.loads(listed.output)] == [holding.id]
    viewer = _remote(ks_env, server, server.tokens["vera"])("unfreeze", holding.id)
    assert viewer.exit_code == 1
    assert "rotations:freeze" in viewer.output
    assert remote("unfreeze", holding.id).exit_code == 0
    assert freezes_service.holding(store) == []
