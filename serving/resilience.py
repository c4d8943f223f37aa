"""Small resilience parts of the hot path: a circuit breaker and the clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["CircuitBreaker", "parse_as_of"]


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures spread over at least ``min_streak_s`` (so one
    slow moment that fails a burst of concurrent calls at once does not open it; a dead dependency, failing
    every call, does). Open for ``cooldown_s``, then one probe is let through (half-open): its success
    closes the breaker, its failure opens it again. A probe that never reports (cancelled, or a caller that
    forgot) holds the slot for at most ``probe_timeout_s``; then the next call is the new probe, so the
    breaker cannot stay open for good. Callers still report a cancelled call as a failure. Not thread-safe:
    one event loop."""

    def __init__(self, failures: int = 3, cooldown_s: float = 1.0, min_streak_s: float = 0.2,
                 probe_timeout_s: float = 2.0) -> None:
        self.threshold, self.cooldown_s, self.min_streak_s = failures, cooldown_s, min_streak_s
        self.probe_timeout_s = probe_timeout_s
        self.failures = 0
        self.streak_start = 0.0
        self.open_until = 0.0
        self.opened = False
        self.probing = False
        self.probe_started = 0.0

    @property
    def state(self) -> str:
        if not self.opened:
            return "closed"
        return "half_open" if time.monotonic() >= self.open_until else "open"

    def allow(self) -> bool:
        if not self.opened:
            return True
        now = time.monotonic()
        if now < self.open_until or (self.probing and now - self.probe_started < self.probe_timeout_s):
            return False
        self.probing, self.probe_started = True, now
        return True

    def success(self) -> None:
        self.failures, self.probing, self.opened = 0, False, False

    def failure(self) -> None:
        now = time.monotonic()
        if self.failures == 0:
            self.streak_start = now
        self.failures += 1
        self.probing = False
        if self.opened or (self.failures >= self.threshold and now - self.streak_start >= self.min_streak_s):
            self.opened = True
            self.open_until = now + self.cooldown_s


def parse_as_of(text: str) -> datetime:
    """An ISO 8601 instant with a time zone (``2013-12-30T18:00:00Z``); ValueError otherwise."""
    if len(text) > 40:
        raise ValueError("too long for an ISO 8601 timestamp")
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("needs a time zone, e.g. 2013-12-30T18:00:00Z")
    return value.astimezone(UTC)
