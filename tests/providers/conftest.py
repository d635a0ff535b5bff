"""Fixtures of the provider tests that more than one module uses: a real ACME server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.servers import Pebble, pebble_server, webroot_server


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """One pebble per test module, refusing one good nonce in five (badNonce) and
    issuing for 90 days as Let's Encrypt does."""
    root = tmp_path_factory.mktemp("pebble")
    with pebble_server(root, nonce_reject=20, validity=timedelta(days=90)) as server:
        yield server


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    """An empty http-01 webroot."""
    path = tmp_path / "www"
    path.mkdir()
    return path


@pytest.fixture
def served(pebble: Pebble, webroot: Path) -> Iterator[list[str]]:
    """The webroot served on the port pebble's validator fetches http-01 answers from;
    the paths it was asked for."""
    with webroot_server(webroot, pebble.http_port) as asked:
        yield asked
