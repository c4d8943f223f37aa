"""What the versions in service answered during a rollout: the prediction log, tailed, joined with outcomes.

A rollout judges its candidate on the answers the API replicas log (``<log>/<usecase>/date=*/*.jsonl``):
:class:`LogTail` reads only what was appended since its last poll (complete lines; a line still being
written is read next time) from files written since the rollout started, keeping the few fields the judge
needs. Outcomes the feedback loop receives (``<outcomes>/<usecase>/date=*/*.jsonl``, keyed by the label's
keys) are joined when present: absolute error and interval coverage per answer. Outcome folders are read for
the days the answers' clocks (``as_of``) fall on and the three days after (labels arrive late).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Answer", "LogTail"]


@dataclass(frozen=True)
class Answer:
    request_id: str
    logged_at: datetime
    version: str
    role: str
    arm: str | None
    routing_version: int
    latency_ms: float
    error: bool
    fallback: bool
    prediction: float
    low: float | None
    high: float | None
    segments: tuple[Any, ...]
    key: tuple[Any, ...] | None


@dataclass
class LogTail:
    """Incremental reader of one use case's prediction log (and outcomes) from ``since`` on."""

    log_dir: Path
    outcome_dir: Path
    output: str
    segments: list[str]
    key_columns: list[str]
    label: str
    since: datetime
    answers: list[Answer] = field(default_factory=list)
    malformed: int = 0
    _offsets: dict[Path, int] = field(default_factory=dict)
    _outcomes: dict[tuple[Any, ...], float] = field(default_factory=dict)
    _outcome_offsets: dict[Path, int] = field(default_factory=dict)
    _days: set[date] = field(default_factory=set)

    def _new_lines(self, folder: Path, offsets: dict[Path, int], days: set[date] | None = None) -> list[str]:
        floor = self.since.timestamp() - 5.0
        lines: list[str] = []
        if days is None:
            paths = sorted(folder.glob("date=*/*.jsonl"))
        else:
            paths = sorted(p for d in sorted(days) for p in (folder / f"date={d.isoformat()}").glob("*.jsonl"))
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if days is None and st.st_mtime < floor:
                continue
            start = offsets.get(path, 0)
            if st.st_size <= start:
                continue
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read()
            end = data.rfind(b"\n") + 1  # complete lines only
            offsets[path] = start + end
            lines.extend(data[:end].decode("utf-8", "replace").splitlines())
        return lines

    def poll(self) -> int:
        """Read what was appended; returns the number of new answers."""
        before = len(self.answers)
        for line in self._new_lines(self.log_dir, self._offsets):
            try:
                self._add(json.loads(line))
            except (ValueError, KeyError, TypeError):
                self.malformed += 1
        days = {d + timedelta(days=k) for d in self._days for k in range(4)}
        for line in self._new_lines(self.outcome_dir, self._outcome_offsets, days):
            try:
                record = json.loads(line)
                value = record[self.label]
                if value is not None:
                    self._outcomes[tuple(record[k] for k in self.key_columns)] = float(value)
            except (ValueError, KeyError, TypeError):
                self.malformed += 1
        return len(self.answers) - before

    def _add(self, r: dict[str, Any]) -> None:
        logged = datetime.fromisoformat(r["logged_at"].replace("Z", "+00:00"))
        if logged < self.since:
            return
        self._days.add(date.fromisoformat(str(r["as_of"])[:10]))
        routing = r.get("routing") or {}
        request = r.get("request") or {}
        interval = r.get("interval") or {}
        widest = interval[max(interval, key=float)][self.output] if interval else [None, None]
        key = tuple(request.get(k) for k in self.key_columns) if self.key_columns else None
        self.answers.append(Answer(
            request_id=r["request_id"], logged_at=logged, version=str(r["model"]["version"]),
            role=str(r.get("route") or routing.get("role") or "primary"), arm=routing.get("arm"),
            routing_version=int(routing.get("version") or 0), latency_ms=float(r.get("latency_ms") or math.nan),
            error=bool(r.get("error")), fallback=r["model"].get("runtime") == "fallback",
            prediction=float(r["prediction"][self.output]), low=widest[0], high=widest[1],
            segments=tuple(request.get(s) for s in self.segments),
            key=None if key is None or any(v is None for v in key) else key))

    def frame(self, versions: dict[str, str], *, since: datetime | None = None, roles: set[str] | None = None,
              ) -> pd.DataFrame:
        """The judge's frame: one row per answer of ``versions`` (version -> arm name) logged since ``since``.

        Columns: arm, version, role, request_id, latency_ms, error, fallback, prediction, abs_error, covered,
        and the segment columns; abs_error / covered are NaN until the outcome is known."""
        rows = []
        for a in self.answers:
            if a.version not in versions or (since is not None and a.logged_at < since) or (
                    roles is not None and a.role not in roles):
                continue
            actual = self._outcomes.get(a.key) if a.key is not None else None
            abs_error = abs(a.prediction - actual) if actual is not None else math.nan
            covered: float = math.nan
            if actual is not None and a.low is not None and a.high is not None:
                covered = float(a.low <= actual <= a.high)
            rows.append({"arm": versions[a.version], "version": a.version, "role": a.role,
                         "request_id": a.request_id, "latency_ms": a.latency_ms, "error": a.error,
                         "fallback": a.fallback, "prediction": a.prediction, "abs_error": abs_error,
                         "covered": covered, **dict(zip(self.segments, a.segments, strict=True))})
        columns = ["arm", "version", "role", "request_id", "latency_ms", "error", "fallback", "prediction",
                   "abs_error", "covered", *self.segments]
        return pd.DataFrame(rows, columns=columns)

    def count(self, version: str, since: datetime, roles: set[str] | None = None) -> int:
        return sum(1 for a in self.answers if a.version == version and a.logged_at >= since
                   and (roles is None or a.role in roles))

    def routing_versions(self, since: datetime) -> set[int]:
        return {a.routing_version for a in self.answers if a.logged_at >= since}
