"""What a listing command prints: its table (the default), or with `-o json` / `-o yaml`
the data behind that table, for scripts.

The data are the service layer's own view types (`StatusRow`, `Timeline`, `Alert`...),
the types the REST API answers with and `Client` reads back, so embedded and `--server`
runs print the same bytes, and the CLI's field names are the API's: snake_case, datetimes
ISO 8601 in UTC (`2024-05-01T12:00:00Z`), durations in seconds, enums by value. A
`Secret` is refused, never printed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keyshift.domain.secret import Secret

# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOption = Annotated[
    Format,
    typer.Option(
        "-o",
        "--output",
        case_sensitive=False,
        help="table (the default), or the data behind it as json or yaml.",
    ),
]


def plain(value: Any) -> Any:
    """`value` as JSON values: dataclasses and pydantic models as objects of their fields,
    datetimes as ISO 8601 UTC (a naive one is UTC, as the store keeps it), timedeltas as
    seconds, enums as their value, tuples and sets as lists."""
    if isinstance(value, Secret):
        raise TypeError("a secret value is never part of the CLI's output")
    if isinstance(value, Enum):
        return plain(value.value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    from pydantic import BaseModel  # not at start-up: `--version` needs no pydantic

    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    raise TypeError(f"no plain form for {type(value).__name__}")


def emit(output: Format, data: Any, table: Callable[[], None]) -> None:
    """Print the table (`table()` prints it), or `data` as JSON or YAML on stdout."""
    if output == Format.TABLE:
        table()
        return
    document = plain(data)
    if output == Format.JSON:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        import yaml  # only -o yaml needs it

        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def new_table(
    title: str,
    columns: Iterable[str],
    rows: Iterable[Sequence[str | Text]],
    *,
    no_wrap: Collection[str] | bool = (),
    right: Collection[str] = (),
    show_header: bool = True,
) -> Table:
    """A left-titled table of `rows`; columns named in `no_wrap` (or all, with True) do
    not wrap, those in `right` are right-justified."""
    table = Table(title=title, title_justify="left", show_header=show_header)
    for col in columns:
        table.add_column(
            col,
            no_wrap=no_wrap if isinstance(no_wrap, bool) else col in no_wrap,
            justify="right" if col in right else "left",
        )
    for row in rows:
        table.add_row(*row)
    return table


LIFECYCLE_COLOURS = {
    "Active": "green",
    "Expiring Soon": "yellow",
    "Expired": "red",
    "Needs Attention": "red",
    "Rotating": "cyan",
    "Grace Period": "cyan",
}


def lifecycle(value: str) -> str:
    """A lifecycle state (of a credential, an Entra secret) in its colour."""
    return f"[{LIFECYCLE_COLOURS.get(value, 'white')}]{value}[/]"


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 16 hex digits of a fingerprint (an HMAC, or a certificate's thumbprint),
    as a version shows its id's first 8: enough to tell versions apart and to compare."""
    return fingerprint.partition(":")[2][:16] if fingerprint else "-"


def day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def clock(value: datetime) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3]


def ms(value: timedelta | float | None) -> str:
    if value is None:
        return "-"
    from keyshift.domain.durations import format_duration  # it loads pydantic

    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return (
        f"{seconds * 1000:.0f} ms"
        if seconds < 10
        else format_duration(timedelta(seconds=round(seconds)))
    )
