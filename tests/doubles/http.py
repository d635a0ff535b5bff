"""Running a double's HTTP server on a thread for the length of a test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class NoDelayHandler(BaseHTTPRequestHandler):
    """The base of every double's request handler. A response goes out in two writes
    (headers, then body); without TCP_NODELAY the body waits for the client's delayed
    ACK, 40 ms a response on Linux, which no real service adds."""

    disable_nagle_algorithm = True


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """Serve `server` on a daemon thread until the block ends, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
