"""Fault injection for crash tests: die at a named step boundary.

`KEYSHIFT_TEST_CRASH_AT=<step name>` makes the process SIGKILL itself right
after that step's side effect and before its journal write: the worst moment
for a crash, which the crash tests exercise at every boundary. Unset, this is
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "KEYSHIFT_TEST_CRASH_AT"


def crash_point(step: str) -> None:
    if os.environ.get(ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
