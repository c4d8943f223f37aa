"""The routing table: per use case, the model versions in service, each with a role and a weight.

Every API replica follows the same table (a folder every replica and the deployment DAG can read, the shared
``routing_dir``), so a weight change, a promotion or a rollback reaches all of them without a restart::

    <routing_dir>/<usecase>/current.json        the table in force (replaced atomically)
    <routing_dir>/<usecase>/history/000007.json every version ever written (the audit of the traffic split)

Roles:

* ``primary``: answers what the other routes do not take; exactly one.
* ``canary``: answers ``weight`` of the requests (by a hash of the request id: a request keeps its route when
  it is retried with the same id).
* ``arm``: an A/B arm; the arm is chosen by a hash of the spec's sticky key (the tail number), salted with the
  rollout id, so one aircraft always sees one arm during a test; arms' weights sum to 1 (the primary is arm A).
* ``shadow``: scores a copy of ``weight`` of the requests after the answer is sent; never answers.

Writes are compare-and-swap under a file lock: :meth:`RoutingStore.write` takes the version the writer read and
refuses when another writer got there first, so two rollouts of one use case cannot interleave their moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["ROLES", "STRATEGIES", "Route", "RoutingConflict", "RoutingError", "RoutingStore", "RoutingTable",
           "bucket"]

ROLES = ("primary", "canary", "arm", "shadow")
STRATEGIES = ("direct", "canary", "shadow", "ab")
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class RoutingError(ValueError):
    """A routing table is invalid; the message names the field."""


class RoutingConflict(RuntimeError):
    """The table changed since the writer read it (another rollout or operator moved it)."""


def bucket(key: str, salt: str = "") -> float:
    """A stable uniform number in [0, 1) for ``key`` (the same on every replica and every run)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Route:
    version: str
    role: str
    weight: float
    arm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RoutingTable:
    usecase: str
    model: str
    routes: tuple[Route, ...]
    strategy: str = "direct"
    version: int = 0
    rollout_id: str | None = None
    sticky_key: str | None = None
    updated_at: str = ""
    updated_by: str = ""
    reason: str = ""
    _answering: tuple[tuple[float, Route], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in (("usecase", self.usecase), ("model", self.model)):
            if not _SAFE.match(value or "") or value in (".", ".."):
                raise RoutingError(f"routing.{name} {value!r} must be letters, digits, '_', '-' or '.'")
        if self.strategy not in STRATEGIES:
            raise RoutingError(f"routing.strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        seen: set[str] = set()
        for i, r in enumerate(self.routes):
            where = f"routing.routes[{i}]"
            if r.role not in ROLES:
                raise RoutingError(f"{where}.role {r.role!r} is not one of {', '.join(ROLES)}")
            if not str(r.version).isdigit() or int(r.version) < 1:
                raise RoutingError(f"{where}.version {r.version!r} must be a registry version number")
            if not 0.0 <= float(r.weight) <= 1.0:
                raise RoutingError(f"{where}.weight {r.weight} must be between 0 and 1")
            if r.version in seen:
                raise RoutingError(f"{where}.version {r.version} appears twice")
            seen.add(r.version)
        primaries = [r for r in self.routes if r.role == "primary"]
        if len(primaries) != 1:
            raise RoutingError(f"routing.routes must have exactly one primary, found {len(primaries)}")
        answering = [r for r in self.routes if r.role in ("primary", "canary", "arm")]
        total = sum(r.weight for r in answering)
        if abs(total - 1.0) > 1e-6:
            raise RoutingError(f"routing.routes: the answering weights (primary, canary, arms) sum to {total:g}, "
                               "not 1")
        if any(r.role == "arm" for r in self.routes) and not self.sticky_key:
            raise RoutingError("routing.sticky_key is required when the table has A/B arms")
        # Cumulative thresholds, non-primary routes first, so weight 0 routes never answer.
        cut, ladder = 0.0, []
        for r in [*(r for r in answering if r.role != "primary"), primaries[0]]:
            cut += r.weight
            if r.weight > 0:
                ladder.append((cut, r))
        object.__setattr__(self, "_answering", tuple(ladder))

    # ------------------------------------------------------------------------------------------ reading
    @property
    def primary(self) -> Route:
        return next(r for r in self.routes if r.role == "primary")

    @property
    def shadows(self) -> list[Route]:
        return [r for r in self.routes if r.role == "shadow" and r.weight > 0]

    def route(self, version: str) -> Route | None:
        return next((r for r in self.routes if r.version == str(version)), None)

    @property
    def versions(self) -> list[str]:
        """Every version the table keeps loaded (weight 0 included: it may still be draining)."""
        return [r.version for r in self.routes]

    def choose(self, request_id: str, sticky_value: str | None = None) -> Route:
        """The route answering a request: A/B by the sticky key's value, otherwise by the request id."""
        if self.sticky_key and any(r.role == "arm" for r in self.routes) and sticky_value:
            u = bucket(sticky_value, self.rollout_id or "")
        else:
            u = bucket(request_id, self.rollout_id or "")
        for cut, r in self._answering:
            if u < cut:
                return r
        return self._answering[-1][1]

    def shadowed(self, request_id: str) -> list[Route]:
        """The shadow routes that score a copy of this request."""
        return [r for r in self.shadows if bucket(request_id, "shadow") < r.weight]

    # ------------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"usecase": self.usecase, "model": self.model, "version": self.version, "strategy": self.strategy,
                "rollout_id": self.rollout_id, "sticky_key": self.sticky_key, "updated_at": self.updated_at,
                "updated_by": self.updated_by, "reason": self.reason,
                "routes": [r.to_dict() for r in self.routes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingTable:
        if not isinstance(data, dict):
            raise RoutingError("a routing table is a JSON object")
        try:
            routes = tuple(Route(str(r["version"]), str(r["role"]), float(r["weight"]), r.get("arm"))
                           for r in data["routes"])
            return cls(usecase=str(data["usecase"]), model=str(data["model"]), routes=routes,
                       strategy=str(data.get("strategy", "direct")), version=int(data.get("version", 0)),
                       rollout_id=data.get("rollout_id"), sticky_key=data.get("sticky_key"),
                       updated_at=str(data.get("updated_at", "")), updated_by=str(data.get("updated_by", "")),
                       reason=str(data.get("reason", "")))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RoutingError):
                raise
            raise RoutingError(f"routing table is malformed: {type(exc).__name__}: {exc}") from None

    def with_routes(self, routes: list[Route], **changes: Any) -> RoutingTable:
        return replace(self, routes=tuple(routes), **changes)


class RoutingStore:
    """The routing tables under one folder (``settings.routing_path``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, usecase: str) -> Path:
        if not _SAFE.match(usecase) or usecase in (".", ".."):
            raise RoutingError(f"use case name {usecase!r} is not a safe folder name")
        return self.root / usecase

    def current_path(self, usecase: str) -> Path:
        return self._dir(usecase) / "current.json"

    def read(self, usecase: str) -> RoutingTable | None:
        """The table in force, or None when the use case was never deployed through a routing table."""
        try:
            text = self.current_path(usecase).read_text()
        except FileNotFoundError:
            return None
        try:
            return RoutingTable.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise RoutingError(f"{self.current_path(usecase)}: not JSON ({exc})") from None

    def history(self, usecase: str) -> list[RoutingTable]:
        folder = self._dir(usecase) / "history"
        if not folder.is_dir():
            return []
        return [RoutingTable.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]

    def write(self, table: RoutingTable, *, expected_version: int | None, by: str, reason: str) -> RoutingTable:
        """Publish ``table`` as the next version; ``expected_version`` is the version the change was based on
        (None: whatever is there). Raises RoutingConflict when it moved meanwhile."""
        folder = self._dir(table.usecase)
        (folder / "history").mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock"), timeout=30):
            current = self.read(table.usecase)
            now_version = current.version if current else 0
            if expected_version is not None and expected_version != now_version:
                raise RoutingConflict(f"routing of {table.usecase} moved to version {now_version} while this "
                                      f"change was based on {expected_version}")
            stamped = replace(table, version=now_version + 1, updated_by=by, reason=reason,
                              updated_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
            text = json.dumps(stamped.to_dict(), indent=1, sort_keys=True)
            _atomic_write(folder / "history" / f"{stamped.version:06d}.json", text)
            _atomic_write(folder / "current.json", text)
        return stamped


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
