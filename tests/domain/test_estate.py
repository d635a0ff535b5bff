"""The estate's rotation window: when it is open (`contains`) and when it opens next
(`next_opening`), daylight-saving changes included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyshift.domain.estate import WEEKDAYS, RotationWindow, Weekday

BERLIN_WEEKDAYS = RotationWindow(
    days=["tue", "wed", "thu"], hours="09:00-16:00", timezone="Europe/Berlin"
)


def test_next_opening_of_an_open_window_is_the_moment_itself() -> None:
    # A Wednesday, 10:30 in Berlin.
    moment = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    assert BERLIN_WEEKDAYS.next_opening(moment) == moment


def test_next_opening_later_the_same_day() -> None:
    # A Tuesday, 07:00 in Berlin (winter, UTC+1): it opens at 09:00 local.
    assert BERLIN_WEEKDAYS.next_opening(datetime(2026, 11, 24, 6, 0, tzinfo=UTC)) == datetime(
        2026, 11, 24, 8, 0, tzinfo=UTC
    )


def test_next_opening_skips_the_days_it_is_closed() -> None:
    # A Thursday, 16:00 in Berlin: closed from then until Tuesday 09:00.
    thursday_close = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
    assert not BERLIN_WEEKDAYS.contains(thursday_close)
    assert BERLIN_WEEKDAYS.next_opening(thursday_close) == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_next_opening_is_in_local_time_across_a_clock_change() -> None:
    # Saturday before the spring change (UTC+1); it opens Tuesday 09:00 CEST (UTC+2).
    assert BERLIN_WEEKDAYS.next_opening(datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) == datetime(
        2026, 3, 31, 7, 0, tzinfo=UTC
    )


def test_next_opening_keeps_the_time_zone_it_was_given() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    opening = BERLIN_WEEKDAYS.next_opening(datetime(2026, 11, 24, 7, 0, tzinfo=berlin))
    assert opening == datetime(2026, 11, 24, 9, 0, tzinfo=berlin)
    assert opening.tzinfo is berlin


WINDOWS = [
    BERLIN_WEEKDAYS,
    RotationWindow(),  # always open
    RotationWindow(days=["sun"], hours="00:00-24:00", timezone="Europe/Berlin"),
    RotationWindow(days=["fri", "sat"], hours="22:00-03:00", timezone="Europe/Berlin"),
    # Opening inside the hour that the spring change skips (02:00-03:00 in Berlin).
    RotationWindow(days=["sun"], hours="02:30-04:00", timezone="Europe/Berlin"),
    RotationWindow(days=["sun"], hours="02:15-02:45", timezone="Europe/Berlin"),
    # Closing inside the hour that the autumn change repeats (02:00-03:00 in Berlin).
    RotationWindow(days=["sun"], hours="01:00-02:30", timezone="Europe/Berlin"),
    RotationWindow(days=["sun"], hours="02:30-02:45", timezone="Europe/Berlin"),
    # America/Santiago changes its clocks at midnight.
    RotationWindow(days=["sat", "sun"], hours="00:00-01:00", timezone="America/Santiago"),
    RotationWindow(days=["mon"], hours="09:00-09:00", timezone="Asia/Kolkata"),
]
"""Windows of every shape: same-day hours, whole days, past midnight, and hours that a
daylight-saving change skips or repeats."""

WEEKS = [
    datetime(2026, 3, 26, tzinfo=UTC),  # Europe's spring change (Sunday 29 March)
    datetime(2026, 10, 22, tzinfo=UTC),  # Europe's autumn change (Sunday 25 October)
    datetime(2026, 4, 1, tzinfo=UTC),  # Santiago's autumn change (Sunday 5 April, 00:00)
    datetime(2026, 9, 3, tzinfo=UTC),  # Santiago's spring change (Sunday 6 September)
]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w.days}-{w.hours}-{w.timezone}")
@pytest.mark.parametrize("week", WEEKS, ids=lambda d: d.date().isoformat())
def test_next_opening_is_the_first_minute_the_window_contains(
    window: RotationWindow, week: datetime
) -> None:
    """Checked against a minute-by-minute walk of `contains` over ten days."""
    minutes = [week + timedelta(minutes=m) for m in range(10 * 24 * 60)]
    is_open = [window.contains(m) for m in minutes]
    first_open: list[datetime | None] = [None] * len(minutes)
    upcoming: datetime | None = None
    for i in range(len(minutes) - 1, -1, -1):
        if is_open[i]:
            upcoming = minutes[i]
        first_open[i] = upcoming
    for i in range(0, 7 * 24 * 60, 7):  # every 7th minute of the first week
        expected = first_open[i]
        if expected is not None:
            assert window.next_opening(minutes[i]) == expected, minutes[i]


_ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")


@settings(max_examples=60, deadline=None)
@given(
    days=st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True),
    start=st.integers(0, 23),
    length=st.integers(1, 23),
    zone=st.sampled_from(_ZONES),
    minutes=st.integers(0, 2 * 365 * 24 * 60),
)
def test_next_opening_is_the_first_open_minute_from_then(
    days: list[Weekday], start: int, length: int, zone: str, minutes: int
) -> None:
    """Against a walk minute by minute: the opening found is open, and no minute before
    it (from `after`) is."""
    end = (start + length) % 24
    window = RotationWindow(days=days, hours=f"{start:02d}:00-{end:02d}:00", timezone=zone)
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes, seconds=30)
    found = window.next_opening(after)
    assert found >= after
    assert window.contains(found)
    moment = after.replace(second=0) + timedelta(minutes=1)
    while moment < found - timedelta(seconds=1):
        assert not window.contains(moment), moment
        moment += timedelta(minutes=1)
