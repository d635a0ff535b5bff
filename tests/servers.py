"""Real servers for tests, started in temp directories on free ports and always stopped.

PostgreSQL refuses to run as root; when the suite runs as root (as CI does),
`initdb` and `pg_ctl` run as the `postgres` user through `runuser`, in a
directory that user owns.
"""

from __future__ import annotations

import glob
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import redis
import uvicorn

from tests.doubles.http import serving
from tests.doubles.tls import make_pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ask a server to stop (SIGTERM), kill it after 10 seconds, and reap it."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise RuntimeError(f"PostgreSQL binary {name} not found (install postgresql-15)")
    return candidates[0]


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@contextmanager
def postgres_server(superuser_password: str | None = None) -> Iterator[str]:
    """Start PostgreSQL and yield a DSN (`postgresql://postgres@127.0.0.1:PORT/postgres`).

    Without a password every login is trusted (fast, for store tests). With one, TCP
    logins need SCRAM-SHA-256 passwords, as on a real server, so tests can prove that
    a wrong or revoked password is refused; the DSN then carries the superuser password.
    """
    root = Path(tempfile.mkdtemp(prefix="keyshift-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    log = root / "server.log"
    auth = ["-A", "trust"]
    if superuser_password is not None:
        pwfile = root / "pwfile"
        pwfile.write_text(superuser_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    initdb = [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", *auth, "--no-sync"]
    subprocess.run(_as_postgres([*initdb, "-E", "UTF8"]), check=True, capture_output=True)
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_postgres(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        userinfo = "postgres" if superuser_password is None else f"postgres:{superuser_password}"
        yield f"postgresql://{userinfo}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _redis_answers(port: int) -> bool:
    """True when a Redis server on 127.0.0.1:port answers PING (RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(*, aclfile: bool = False) -> Iterator[str]:
    """Start redis-server without persistence and yield its URL (`redis://127.0.0.1:PORT/0`).

    The default user stays as Redis starts it (`nopass`, all permissions), so tests set up
    their own admin and application users. With `aclfile`, users are kept in
    `users.acl` in the server's directory (`CONFIG GET dir`), which `ACL SAVE` writes.
    """
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server not found (apt-get install -y redis-server)")
    root = Path(tempfile.mkdtemp(prefix="keyshift-redis-"))
    port = free_port()
    extra: list[str] = []
    if aclfile:
        (root / "users.acl").write_text("", encoding="utf-8")
        extra = ["--aclfile", str(root / "users.acl")]
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--daemonize",
            "no",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not _redis_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {port}:\n{tail}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_replica(primary_url: str) -> Iterator[str]:
    """Start a redis-server that replicates `primary_url` (`REPLICAOF`), wait until its link
    to the primary is up, and yield its URL. Redis replicates data, not ACLs: the replica
    starts with only its default user, as a real one whose ACL is managed per node."""
    primary = urlsplit(primary_url)
    with redis_server() as url:
        with redis.Redis.from_url(url, decode_responses=True) as replica:
            replica.execute_command("REPLICAOF", primary.hostname, str(primary.port))
            deadline = time.monotonic() + 30
            while replica.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {url} did not reach the primary {primary_url}")
                time.sleep(0.05)
        yield url


@contextmanager
def in_thread(server: uvicorn.Server, what: str, *, stop_within: float = 40) -> Iterator[None]:
    """Run a uvicorn server in a daemon thread until the block ends; returns once it
    listens. `what` names it in the assertion when it does not start."""
    thread = threading.Thread(target=server.run, name=what, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), f"{what} stopped while starting"
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=stop_within)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free port in a thread; yields its base URL. Stopped
    on exit, after the rotations it runs in the background have ended (its lifespan)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    with in_thread(uvicorn.Server(config), "uvicorn"):
        yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Nginx:
    """An nginx serving TLS on `port` from `cert` (certificate then chain) and `key`;
    `reload` is the argv that makes it read them again (`nginx -s reload`)."""

    port: int
    cert: Path
    key: Path
    reload: list[str]


@contextmanager
def nginx_server(prefix: Path, cert: Path, key: Path) -> Iterator[Nginx]:
    """Start Debian's nginx in the foreground (`daemon off`) with its own prefix, config,
    pid file, logs and free port, serving TLS from `cert` and `key` (which must exist);
    stop it however the test ends."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx not found (apt-get install -y nginx)")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    temp = " ".join(
        f"{kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf.write_text(
        f"""daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} warn;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {temp} uwsgi_temp_path {prefix / "uwsgi"}; scgi_temp_path {prefix / "scgi"};
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""",
        encoding="utf-8",
    )
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log")]
    log = (prefix / "logs" / "stdout.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (prefix / "nginx.pid").exists() or not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (prefix / "logs" / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx did not start on port {port}:\n{tail}")
            time.sleep(0.05)
        yield Nginx(port, cert, key, [*argv, "-s", "reload"])
    finally:
        stop(process)
        log.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Pebble:
    """A running pebble (Let's Encrypt's ACME test server) and its challenge test server.

    `directory_url` is the ACME directory, served over TLS with a certificate `ca_bundle`
    signed; `http_port` is where pebble's validator fetches http-01 answers (every name
    resolves to 127.0.0.1 through the challenge test server's DNS); `challenges` is that
    server's management API (`POST /set-txt`, `/clear-txt` for dns-01 answers), and
    `management` is pebble's, which serves the issuing CA (`/roots/0`,
    `/intermediates/0`)."""

    directory_url: str
    ca_bundle: Path
    http_port: int
    challenges: str
    management: str

    def issuer_pem(self, what: str) -> str:
        """pebble's root (`roots`) or intermediate (`intermediates`) certificate, PEM."""
        return self.get(f"/{what}/0")

    def get(self, path: str) -> str:
        """What pebble's management API answers to GET `path`."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"{self.management}{path}"
        with urlopen(url, context=context, timeout=10) as answer:  # noqa: S310 (the test server)
            text: str = answer.read().decode("utf-8")
            return text


PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def pebble_installed() -> bool:
    return Path(PEBBLE).exists() and Path(CHALLTESTSRV).exists()


@contextmanager
def pebble_server(
    root: Path,
    *,
    nonce_reject: int = 0,
    validity: timedelta = timedelta(days=30),
    eab_keys: dict[str, str] | None = None,
) -> Iterator[Pebble]:
    """Start Debian's pebble and pebble-challtestsrv on free ports in `root`, with a TLS
    certificate made for the run, and stop both however the test ends.

    What it covers: real RFC 8555 issuance (accounts, orders, authorizations,
    finalization with a CSR, the chain download, revocation); http-01 validated by
    really fetching `/.well-known/acme-challenge/<token>` from 127.0.0.1:`http_port`
    (the test serves it); dns-01 validated by really querying TXT records, which the
    challenge test server answers from what its management API was told. Validations do
    not sleep (`PEBBLE_VA_NOSLEEP`), are never faked (no `PEBBLE_VA_ALWAYS_VALID`), and
    authorizations are never reused (`PEBBLE_AUTHZREUSE=0`), so every order answers its
    challenges. `nonce_reject` is the percentage of good nonces pebble refuses as
    `badNonce` (`PEBBLE_WFE_NONCEREJECT`), to prove a client holds against a flaky CA.
    Certificates are valid for `validity` (`certificateValidityPeriod`). With `eab_keys`
    (key id to base64url HMAC key), accounts are registered only with an external account
    binding made with one of them."""
    root.mkdir(parents=True, exist_ok=True)
    tls = make_pki(root / "tls")
    acme_port, management_port, http_port, tls_port = (free_port() for _ in range(4))
    dns_port, challenges_port = free_port(), free_port()
    config = root / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{acme_port}",
                    "managementListenAddress": f"127.0.0.1:{management_port}",
                    "certificate": str(tls.cert_path),
                    "privateKey": str(tls.key_path),
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": eab_keys is not None,
                    "externalAccountMACKeys": eab_keys or {},
                    "certificateValidityPeriod": int(validity.total_seconds()),
                }
            }
        ),
        encoding="utf-8",
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_AUTHZREUSE": "0",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
    }
    log = (root / "servers.log").open("wb")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [
                    CHALLTESTSRV,
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    f"127.0.0.1:{dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{challenges_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        processes.append(
            subprocess.Popen(
                [PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
            )
        )
        deadline = time.monotonic() + 30
        while not all(_listening(p) for p in (acme_port, management_port, challenges_port)):
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                tail = (root / "servers.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"pebble did not start:\n{tail}")
            time.sleep(0.05)
        yield Pebble(
            directory_url=f"https://127.0.0.1:{acme_port}/dir",
            ca_bundle=tls.ca_path,
            http_port=http_port,
            challenges=f"http://127.0.0.1:{challenges_port}",
            management=f"https://127.0.0.1:{management_port}",
        )
    finally:
        for process in reversed(processes):
            stop(process)
        log.close()


DNS_HOOK = """\
import json, sys, urllib.request
challenges, log, action, name, value = sys.argv[1:6]
with open(log, "a") as f:
    f.write(f"{action} {name}\\n")
if "fail" in name:
    print("dns-api-token-0123456789abcdef", file=sys.stderr)
    sys.exit(3)
host = name if name.endswith(".") else name + "."
path = "/set-txt" if action == "present" else "/clear-txt"
body = json.dumps({"host": host, "value": value}).encode()
urllib.request.urlopen(urllib.request.Request(challenges + path, data=body)).read()
"""


def dns_hook(pebble: Pebble, directory: Path) -> tuple[dict[str, Any], Path]:
    """A dns-01 `challenge` whose hook publishes and removes TXT records through the
    challenge test server's management API, as a user's hook does through their DNS's
    API; and the file it logs `<action> <record name>` lines to. For a record name
    holding `fail` it prints a would-be DNS token to stderr and exits 3."""
    script, log = directory / "dns-hook.py", directory / "dns-hook.log"
    script.write_text(DNS_HOOK, encoding="utf-8")
    hook = [sys.executable, str(script), pebble.challenges, str(log)]
    return {"type": "dns-01", "hook": hook}, log


@contextmanager
def webroot_server(webroot: Path, port: int) -> Iterator[list[str]]:
    """Serve the files under `webroot` over plain HTTP on 127.0.0.1:`port`, as a web
    server serving an http-01 webroot does, until the block ends; yields the paths it
    was asked for (with the status it answered), in order."""
    asked: list[str] = []

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(webroot), **kwargs)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            asked.append(f"{self.path} {code}")

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", port), Files)):
        yield asked
