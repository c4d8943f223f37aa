"""Instants as integer microseconds since the Unix epoch (UTC): Spark's own representation of a timestamp,
and the one the feature language and the online store compute with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def to_micros(value: Any, what: str = "the timestamp", *, naive_is_utc: bool = False) -> int:
    """A ``datetime`` (a pandas ``Timestamp`` too) as epoch microseconds; sub-microsecond digits are dropped
    (floor), as Spark does.

    The rule for a naive datetime (no UTC offset) is the caller's, and explicit: refused by default (a
    ValueError naming ``what``; the online store's writes and clocks must say their zone), taken as UTC with
    ``naive_is_utc`` (the feature language's inputs: rows and data frames read from the lake, whose
    timestamps are UTC). Anything but a datetime is a ValueError naming ``what``.
    """
    if not isinstance(value, datetime):
        want = "a datetime" if naive_is_utc else "a timezone-aware datetime"
        raise ValueError(f"{what} must be {want}, got {type(value).__name__} {value!r:.60}")
    if value.utcoffset() is None:
        if not naive_is_utc:
            raise ValueError(f"{what} must be timezone-aware (e.g. tzinfo=datetime.UTC), got naive {value}")
        d = (value if value.tzinfo is None else value.replace(tzinfo=None)) - _EPOCH_NAIVE
    else:
        d = value - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_micros(us: int) -> datetime:
    """Epoch microseconds as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)
