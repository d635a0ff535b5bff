"""What `keyshift worker` shows of the fleet: a progress line while a scan's rotations
run (done, running, waiting for their window, throttled, failed), and with `-o json` a
summary of each scan instead."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from keyshift.pacing import Pacer
from keyshift.service import fleet


class FleetProgress(fleet.Tally):
    """The scan's tally as a live progress line on a terminal; nothing elsewhere (the
    scan line says it when the scan ends)."""

    def __init__(self, console: Console, pacer: Pacer) -> None:
        super().__init__()
        self.console = console
        self.pacer = pacer
        self._live: Live | None = None

    @property
    def throttled(self) -> int:
        """Issuer budgets paused for a 429's or 503's Retry-After right now."""
        return self.pacer.paused()

    def line(self) -> Text:
        return Text(
            f"{self.done} done · {self.running} running · {self.waiting} waiting for window"
            f" · {self.throttled} throttled · {self.failed} failed"
            + (f" · {self.refused} refused" if self.refused else "")
            + (f" · {self.skipped} left to other workers" if self.skipped else "")
        )

    def changed(self) -> None:
        if self._live is None and self.running and self.console.is_terminal:
            self._live = Live(self.line(), console=self.console, transient=True)
            self._live.start()
        if self._live is not None:
            self._live.update(self.line())

    def finish(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def outcome_data(outcome: fleet.Outcome) -> dict[str, Any]:
    if outcome.error is not None:
        result = "error"
    elif outcome.refused:
        result = "refused"
    elif outcome.skipped is not None:
        result = "skipped"
    else:
        result = outcome.state.value if outcome.state is not None else "unknown"
    return {
        "credential": outcome.credential,
        "rotation_id": outcome.rotation_id,
        "result": result,
        "reasons": list(outcome.refused),
        "detail": outcome.error or outcome.skipped,
    }


def summary(counts: dict[str, int], tally: fleet.Tally, pacer: Pacer) -> str:
    """One scan as one JSON object (one line): its counts, every rotation it ran, and
    the issuers' budgets."""
    return json.dumps(
        {
            **counts,
            "budgets": [
                {
                    "name": b.name,
                    "limit_per_second": b.limit,
                    "rate_per_second": round(b.rate, 3),
                    "paused_for_seconds": round(b.paused_for, 3),
                    "waits": b.waits,
                    "throttled": b.throttled,
                }
                for b in pacer.snapshots()
            ],
            "done": tally.done,
            "failed": tally.failed,
            "refused": tally.refused,
            "skipped": tally.skipped,
            "waiting_for_window": tally.waiting,
            "rotations": [outcome_data(o) for o in tally.outcomes],
        },
        sort_keys=True,
    )
