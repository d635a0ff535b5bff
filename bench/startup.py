"""Start-up: wall time and peak RSS of `keyshift --version`, `--help` and `status` on an
empty home, and the RSS of the host agent (`keyshift agent run`) idling.

Each figure prints as a ratio to its goal (<= 1 meets it):

    --version, --help      <= 300 ms and <= 60 MB
    status (empty home)    <= 400 ms (a new KEYSHIFT_HOME each run: the store is created)
    agent run, idle        <= 40 MB

Times (wall, and the CPU time beside it, which is what the wall time comes to on an idle
machine) are the median of `--runs` runs, RSS the largest; each command runs once first so
its bytecode is cached, as an installed package has it. The machine's load counts: run
it on a quiet one. Run: `.venv/bin/python bench/startup.py [--runs 7]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEYSHIFT = [sys.executable, "-m", "keyshift.cli"]
MB = 1024 * 1024
AGENT_ID = "11111111-1111-1111-1111-111111111111"
AGENT_KEY_ENV = "BENCH_AGENT_KEY"
IDLE_SECONDS = 3.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
    # Bytecode is written and used, as after `pip install` (which compiles it).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS bytes and CPU seconds of one run of `args` (which must
    succeed)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {process.returncode}: {stderr}")
    # ru_maxrss is in KiB on Linux.
    return wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def _measure(
    name: str, args: list[str], runs: int, make_env: Callable[[], dict[str, str]]
) -> dict[str, Any]:
    _run(args, make_env())  # warm: bytecode cached, files in the page cache
    samples = [_run(args, make_env()) for _ in range(runs)]
    wall = statistics.median(s[0] for s in samples)
    rss = max(s[1] for s in samples)
    cpu = statistics.median(s[2] for s in samples)
    return {"name": name, "wall_ms": wall * 1000, "rss_mb": rss / MB, "cpu_ms": cpu * 1000}


def _empty_home_env(root: Path) -> Callable[[], dict[str, str]]:
    counter = iter(range(1_000_000))

    def make() -> dict[str, str]:
        home = root / f"home-{next(counter)}"
        home.mkdir()
        return _env(KEYSHIFT_HOME=str(home))

    return make


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, for the agent's HTTPS listener."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyshift-bench-agent")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "agent.pem", directory / "agent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def _agent_idle(root: Path) -> dict[str, Any]:
    """Start the agent, wait for its first health answer, let it idle, read its RSS."""
    cert, key = _self_signed(root)
    port = _free_port()
    config = root / "agent.yaml"
    config.write_text(
        json.dumps(
            {
                "agent_id": AGENT_ID,
                "listen": f"127.0.0.1:{port}",
                "tls_cert": str(cert),
                "tls_key": str(key),
                "key_from": f"env:{AGENT_KEY_ENV}",
                "allowed_paths": [str(root)],
            }
        ),
        encoding="utf-8",
    )
    env = _env(**{AGENT_KEY_ENV: "bench-agent-signing-key-" + "0123456789abcdef" * 2})
    process = subprocess.Popen(
        [*KEYSHIFT, "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        trust.check_hostname = False
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the agent exited {process.returncode}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                    trust.wrap_socket(raw) as tls,
                ):
                    tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    if tls.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not answer /v1/health in 30 s")
            time.sleep(0.1)
        time.sleep(IDLE_SECONDS)
        return {"name": "agent run, idle", "rss_mb": _rss_of(process.pid) / MB}
    finally:
        process.terminate()
        process.wait(timeout=20)


GOALS = {
    "--version": {"wall_ms": 300.0, "rss_mb": 60.0},
    "--help": {"wall_ms": 300.0, "rss_mb": 60.0},
    "status (empty home)": {"wall_ms": 400.0},
    "agent run, idle": {"rss_mb": 40.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keyshift-bench-startup-") as tmp:
        root = Path(tmp)
        results = [
            _measure("--version", [*KEYSHIFT, "--version"], args.runs, _env),
            _measure("--help", [*KEYSHIFT, "--help"], args.runs, _env),
            _measure(
                "status (empty home)", [*KEYSHIFT, "status"], args.runs, _empty_home_env(root)
            ),
            _agent_idle(root),
        ]
    summary = []
    for result in results:
        for unit, goal in GOALS[result["name"]].items():
            value = result[unit]
            label = "ms" if unit == "wall_ms" else "MB"
            # CPU time says what the wall time would be on an idle machine.
            cpu = f", cpu {result['cpu_ms']:.0f} ms" if unit == "wall_ms" else ""
            print(
                f"{result['name']:<22} {value:7.1f} {label} (goal {goal:.0f} {label}{cpu}): "
                f"ratio = {value / goal:.2f}"
            )
            summary.append(
                {
                    "name": result["name"],
                    unit: round(value, 1),
                    **({"cpu_ms": round(result["cpu_ms"], 1)} if unit == "wall_ms" else {}),
                    "goal": goal,
                    "ratio": round(value / goal, 3),
                }
            )
    print(json.dumps({"runs": args.runs, "load": os.getloadavg()[0], "results": summary}))


if __name__ == "__main__":
    main()
