"""GraphClient against the local Graph double, through the real azure-identity credential
(aio) and httpx over TLS with a test CA."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import ClientSecretCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyshift import metrics
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError, TransientError
from keyshift.providers.entra import proof_of_possession
from keyshift.providers.graph import (
    Application,
    GraphClient,
    GraphRequestFailed,
    TokenRefused,
    azure_identity_token_source,
    odata_literal,
)
from keyshift.testing import FakeClock, capture_logs
from tests.doubles.graph import GraphDouble
from tests.doubles.tls import TlsFiles

T = TypeVar("T")
CLIENT_SECRET = "double-client-secret-value"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    with GraphDouble(tls, client_secret=CLIENT_SECRET) as double:
        yield double


def credential(
    graph: GraphDouble, ca: Path, *, client_id: str | None = None, secret: str = CLIENT_SECRET
) -> ClientSecretCredential:
    return ClientSecretCredential(
        graph.tenant_id,
        client_id or graph.client_id,
        secret,
        authority=graph.authority,
        disable_instance_discovery=True,
        transport=AsyncioRequestsTransport(connection_verify=str(ca)),
    )


@asynccontextmanager
async def connected(
    graph: GraphDouble, tls: TlsFiles, clock: FakeClock, **kwargs: Any
) -> AsyncIterator[GraphClient]:
    """A GraphClient on the double, its token from a real azure-identity credential."""
    async with (
        credential(graph, tls.ca_path, secret=kwargs.pop("secret", CLIENT_SECRET)) as cred,
        GraphClient(
            azure_identity_token_source(cred),
            clock.context(),
            base_url=graph.graph_url,
            verify=tls.client_context(),
            **kwargs,
        ) as graph_client,
    ):
        yield graph_client


async def collect(graph_client: GraphClient, filter: str | None = None) -> list[Application]:
    return [app async for app in graph_client.list_applications(filter)]


def chain_texts(exc: BaseException) -> str:
    """Every message and repr in an exception's cause/context chain."""
    texts: list[str] = []
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *(str(a) for a in current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def test_token_is_acquired_through_azure_identity_and_cached(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    graph.add_application("payments-api")

    async def scenario() -> tuple[list[Application], list[Application]]:
        async with connected(graph, tls, FakeClock()) as gc:
            return await collect(gc), await collect(gc)

    first, second = run(scenario())
    assert [a.display_name for a in first] == ["payments-api"] == [a.display_name for a in second]
    assert graph.tokens_issued == 1
    assert len(graph.graph_requests("GET")) == 2


def test_wrong_client_secret_is_permanent_with_aadsts_code_and_no_secret(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    wrong = "wrong-secret-value-1234"

    async def scenario() -> None:
        async with connected(graph, tls, FakeClock(), secret=wrong) as gc:
            await collect(gc)

    with capture_logs(secrets=[wrong, CLIENT_SECRET]), pytest.raises(TokenRefused) as caught:
        run(scenario())
    assert isinstance(caught.value, PermanentError)
    assert caught.value.code == "AADSTS7000215"
    assert "AADSTS7000215" in str(caught.value)
    assert wrong not in chain_texts(caught.value)
    assert graph.tokens_issued == 0
    assert graph.graph_requests() == []


def test_paging_follows_next_link_across_1000_applications(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    created = {graph.add_application(f"app-{i:04d}").id for i in range(1000)}

    async def scenario() -> list[Application]:
        async with connected(graph, tls, FakeClock(), page_size=100) as gc:
            return await collect(gc)

    apps = run(scenario())
    assert len(apps) == 1000
    assert {a.id for a in apps} == created
    pages = graph.graph_requests("GET")
    assert len(pages) == 10
    assert pages[0].query == {"$top": ["100"]}
    assert all("$skiptoken" in p.query and p.query["$top"] == ["100"] for p in pages[1:])
    assert len({p.query["$skiptoken"][0] for p in pages[1:]}) == 9


def _throttled() -> float:
    value = metrics.EVENTS.get_sample_value(
        "keyshift_throttled_responses_total", {"system": "graph"}
    )
    return value or 0.0


def test_429_with_retry_after_is_waited_on_the_context_clock_then_succeeds(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    graph.add_application("payments-api")
    graph.throttle(3, retry_after=2)
    clock = FakeClock()

    async def scenario() -> list[Application]:
        async with connected(graph, tls, clock) as gc:
            return await collect(gc)

    throttled_before = _throttled()
    started = time.monotonic()
    with capture_logs() as events:
        apps = run(scenario())
    wall = time.monotonic() - started
    assert [a.display_name for a in apps] == ["payments-api"]
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert _throttled() - throttled_before == 3, "each 429 is counted for /metrics"
    assert wall < 2.0, "the retry waited on wall time"
    assert len(graph.graph_requests("GET")) == 4
    assert [e["attempt"] for e in events if e["event"] == "graph.retry"] == [1, 2, 3]


def test_retries_stop_at_max_retry_time_with_transient_error(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    graph.throttle(10, retry_after=50)
    clock = FakeClock()

    async def scenario() -> None:
        async with connected(graph, tls, clock, max_retry_time=120) as gc:
            await collect(gc)

    with pytest.raises(TransientError) as caught:
        run(scenario())
    assert caught.value.retry_after == 50
    assert "429" in str(caught.value)
    assert clock.sleeps == [50.0, 50.0]
    assert len(graph.graph_requests()) == 3


def test_503_without_retry_after_backs_off_exponentially_with_jitter(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    graph.add_application("payments-api")
    graph.throttle(3, retry_after=None, status=503)
    clock = FakeClock()

    async def scenario() -> list[Application]:
        async with connected(graph, tls, clock) as gc:
            return await collect(gc)

    assert len(run(scenario())) == 1
    assert len(clock.sleeps) == 3
    for attempt, slept in enumerate(clock.sleeps, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= slept <= ceiling


def test_refused_connection_is_retried_within_budget_then_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = FakeClock()

    async def token() -> str:
        return "unused-token"

    async def scenario() -> None:
        async with GraphClient(
            token, clock.context(), base_url=f"https://127.0.0.1:{port}/v1.0", max_retry_time=30
        ) as gc:
            await gc.get_application("00000000-0000-0000-0000-000000000001")

    with pytest.raises(TransientError) as caught:
        run(scenario())
    assert "ConnectError" in str(caught.value)
    assert caught.value.retry_after is not None
    assert len(clock.sleeps) >= 3
    assert sum(clock.sleeps) <= 30


def test_403_names_the_permission_needed_and_is_not_retried(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    app = graph.add_application("payments-api")
    clock = FakeClock()

    async def scenario() -> None:
        async with connected(graph, tls, clock) as gc:
            await gc.add_password(app.id, "keyshift:rot-1", datetime.now(UTC) + timedelta(days=90))

    with graph.writes_denied(), pytest.raises(GraphRequestFailed) as caught:
        run(scenario())
    assert caught.value.status == 403
    assert caught.value.code == "Authorization_RequestDenied"
    assert "Application.ReadWrite.OwnedBy" in str(caught.value)
    assert "Application.ReadWrite.All" in str(caught.value)
    assert caught.value.request_id
    assert clock.sleeps == []
    assert len(graph.graph_requests("POST")) == 1
    assert app.passwords == []


def test_unknown_application_is_permanent_404(graph: GraphDouble, tls: TlsFiles) -> None:
    async def scenario() -> None:
        async with connected(graph, tls, FakeClock()) as gc:
            await gc.get_application("00000000-0000-0000-0000-0000000000ff")

    with pytest.raises(GraphRequestFailed) as caught:
        run(scenario())
    assert (caught.value.status, caught.value.code) == (404, "Request_ResourceNotFound")


def test_filter_injection_is_quoted_as_one_literal(graph: GraphDouble, tls: TlsFiles) -> None:
    hostile = "x' or 1 eq 1 or displayName eq 'y"
    graph.add_application("x")
    graph.add_application("y")
    target = graph.add_application(hostile)
    expression = f"displayName eq {odata_literal(hostile)}"

    async def scenario() -> list[Application]:
        async with connected(graph, tls, FakeClock()) as gc:
            return await collect(gc, expression)

    apps = run(scenario())
    assert [a.id for a in apps] == [target.id]
    (seen,) = graph.graph_requests("GET")
    assert seen.query["$filter"] == ["displayName eq 'x'' or 1 eq 1 or displayName eq ''y'"]


def test_filter_by_app_id_finds_one_application(graph: GraphDouble, tls: TlsFiles) -> None:
    graph.add_application("a")
    wanted = graph.add_application("b")

    async def scenario() -> list[Application]:
        async with connected(graph, tls, FakeClock()) as gc:
            return await collect(gc, f"appId eq {odata_literal(wanted.app_id)}")

    assert [a.id for a in run(scenario())] == [wanted.id]


@pytest.mark.parametrize(
    "value",
    ["line\nbreak", "nul\x00byte", "tab\there", "escape\x1b[0m", "bidi\u202eoverride", "del\x7f"],
)
def test_odata_literal_refuses_control_and_unprintable_characters(value: str) -> None:
    with pytest.raises(ValueError, match="control"):
        odata_literal(value)


def test_odata_literal_doubles_quotes() -> None:
    assert odata_literal("O'Brien's app") == "'O''Brien''s app'"
    assert odata_literal("") == "''"


def test_add_and_remove_password_round_trip_never_shows_the_secret(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    app = graph.add_application("payments-api")
    clock = FakeClock()
    # The double keeps wall time, so expiries are set from it, not from the FakeClock.
    end = datetime.now(UTC) + timedelta(days=90)
    shown: list[str] = []

    async def scenario() -> None:
        async with connected(graph, tls, clock) as gc:
            added = await gc.add_password(app.id, "keyshift:rot-1", end)
            shown.append(added.secret.reveal())
            assert isinstance(added.secret, Secret)
            assert added.secret.reveal() not in repr(added)
            assert repr(added.secret) == "Secret('**********')"
            assert len(added.secret.reveal()) == 40
            assert added.hint == added.secret.reveal()[:3]
            assert added.display_name == "keyshift:rot-1"
            assert added.end == end.replace(microsecond=0)

            listed = await gc.get_application(app.id)
            assert [p.key_id for p in listed.password_credentials] == [added.key_id]
            assert listed.password_credentials[0].hint == added.hint

            # The minted secret signs in as the application.
            async with credential(
                graph, tls.ca_path, client_id=app.app_id, secret=added.secret.reveal()
            ) as minted:
                assert (await minted.get_token("https://graph.microsoft.com/.default")).token

            await gc.remove_password(app.id, added.key_id)
            assert (await gc.get_application(app.id)).password_credentials == ()

            with pytest.raises(GraphRequestFailed) as again:
                await gc.remove_password(app.id, added.key_id)
            assert (again.value.status, again.value.code) == (400, "Request_BadRequest")
            assert added.secret.reveal() not in chain_texts(again.value)

    with capture_logs(secrets=shown) as events:
        run(scenario())
    (secret,) = shown
    assert {e["event"] for e in events} >= {"graph.password_added", "graph.password_removed"}
    assert secret not in repr(graph.requests)
    assert all(secret not in p.secret_sha256 for p in app.passwords)
    assert [r.method for r in graph.graph_requests()] == ["POST", "GET", "POST", "GET", "POST"]


def test_add_password_is_retried_after_429_but_not_after_ambiguous_504(
    graph: GraphDouble, tls: TlsFiles
) -> None:
    app = graph.add_application("payments-api")
    clock = FakeClock()
    end = datetime.now(UTC) + timedelta(days=30)

    async def add() -> None:
        async with connected(graph, tls, clock) as gc:
            await gc.add_password(app.id, "keyshift:rot-2", end)

    graph.throttle(1, retry_after=2, status=429)
    run(add())
    assert len(app.passwords) == 1
    assert clock.sleeps == [2.0]

    graph.throttle(1, retry_after=None, status=504)
    with pytest.raises(TransientError, match="not repeated"):
        run(add())
    assert len(app.passwords) == 1
    assert len(graph.graph_requests("POST")) == 3


def test_next_link_to_another_origin_is_not_followed() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "value": [{"id": "1", "appId": "a", "displayName": "one"}],
                "@odata.nextLink": "https://attacker.example/v1.0/applications?$skiptoken=x",
            },
        )

    async def token() -> str:
        return "bearer-value"

    async def scenario() -> list[Application]:
        async with GraphClient(
            token, FakeClock().context(), transport=httpx.MockTransport(answer)
        ) as gc:
            return await collect(gc)

    with pytest.raises(PermanentError, match="another origin"):
        run(scenario())
    assert [r.url.host for r in seen] == ["graph.microsoft.com"]


# --- certificates (keyCredentials) ------------------------------------------------------------


def _certificate_and_key(at: datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "graph client test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(minutes=5))
        .not_valid_after(at + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def test_add_key_is_repeated_after_429_but_not_after_an_ambiguous_504_and_remove_key_is(
    graph: GraphDouble, tls: TlsFiles
) -> None:

    app = graph.add_application("payments-api")
    now = datetime.now(UTC)
    key, cert = _certificate_and_key(now)
    graph.seed_certificate(app, "by hand", certificate=cert)
    _, first = _certificate_and_key(now)
    _, second = _certificate_and_key(now)
    der = serialization.Encoding.DER
    clock = FakeClock(now)

    async def scenario() -> tuple[str, str]:
        async with connected(graph, tls, clock) as gc:
            graph.throttle(1, retry_after=1, status=429)
            added = await gc.add_key(
                app.id,
                first.public_bytes(der),
                "first",
                proof_of_possession(key, cert, app.id, now),
            )
            graph.throttle(1, retry_after=None, status=504)
            with pytest.raises(TransientError, match="not repeated"):
                await gc.add_key(
                    app.id,
                    second.public_bytes(der),
                    "second",
                    proof_of_possession(key, cert, app.id, now),
                )
            listed = await gc.list_key_credentials(app.id)
            assert [k.display_name for k in listed] == ["by hand", "first"]
            assert all(k.key for k in listed), "$select=keyCredentials returns the keys"
            graph.throttle(1, retry_after=None, status=504)
            await gc.remove_key(app.id, added.key_id, proof_of_possession(key, cert, app.id, now))
            await gc.set_key_credentials(app.id, [listed[0].as_graph()])
            return added.key_id, listed[0].key_id

    removed, kept = run(scenario())
    assert [c.key_id for c in app.certificates] == [kept], "the update kept the one it sent"
    assert graph.removed_key_ids == [removed]
    assert graph.patches == 1
    assert graph.invalid_proofs == 0
    assert [r.method for r in graph.graph_requests() if r.path.endswith("/addKey")] == [
        "POST",
        "POST",
        "POST",
    ], "the 429 was repeated once; the 504 was not"
