"""A throwaway certificate authority and a server certificate for 127.0.0.1 and localhost.

Clients that refuse plain http (azure-identity, the Key Vault SDK) talk to local
doubles over TLS; the test trusts `ca_path` only, never the system store.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.doubles.http import NoDelayHandler


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and of a server certificate (with its key) it signed."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts the test CA only."""
        return ssl.create_default_context(cafile=str(self.ca_path))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, *, hosts: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """Write a fresh CA and a server certificate for 127.0.0.1, ::1 and `hosts` into
    `directory`. Valid from an hour ago for a day; keys are P-256."""
    now = datetime.now(UTC)
    not_before, not_after = now - timedelta(hours=1), now + timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("keyshift test CA"))
        .issuer_name(_name("keyshift test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        *(x509.DNSName(h) for h in hosts),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    pki = TlsFiles(
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server-key.pem",
    )
    pki.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pki.key_path.chmod(0o600)
    return pki


Answer = tuple[int, dict[str, str], bytes]
Handle = Callable[[str, str, dict[str, str], bytes], Answer | None]


def _handler(handle: Handle) -> type[BaseHTTPRequestHandler]:
    class Handler(NoDelayHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = handle(self.command, self.path, headers, body)
            if answer is None:
                self.close_connection = True
                return
            status, extra, payload = answer
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet: each double keeps its own request log

    return Handler


class TlsServer:
    """A `ThreadingHTTPServer` over TLS on 127.0.0.1, serving from a daemon thread.

    The TLS handshake runs on the handler's first read, in the handler's own thread,
    so one slow client does not hold up `accept()`.
    """

    def __init__(self, tls: TlsFiles, name: str) -> None:
        self.tls = tls
        self.name = name
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, handle: Handle) -> None:
        """Serve every request through `handle(method, path, headers, body)`, which
        answers (status, headers, body), or None to drop the connection unanswered."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(handle))
        server.daemon_threads = True
        server.socket = self.tls.server_context().wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the {self.name} double is not running")
        return int(self._server.server_address[1])
