"""Request-time features: entity keys from the request, online lookups with freshness SLAs, request features.

Per batch view, each request row gives one entity key (``None`` when a key column is null: that view then
serves its defaults, status ``no_key``). The online store answers found/values/age per key at the request's
clock. Per feature the spec's SLA decides freshness and, when stale, its policy: ``serve_stale`` (value kept,
flagged), ``use_default`` (value replaced by the default, flagged) or ``reject`` (the request fails with
:class:`StaleFeature`, a 422 naming the feature). A missing row, or the store being unavailable, gives the
defaults (flagged). Request features are the spec's own definitions compiled by the feature language's
Python compiler (``compile_python``): the same definitions the offline store and training sets use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.features import compile_python
from pipelines.featurestore.materialize import online_view_name
from pipelines.featurestore.spec import FeatureSet
from pipelines.stores.online.base import ReadResult

__all__ = ["FeatureResolver", "ResolvedRow", "StaleFeature", "ViewPlan"]


class StaleFeature(Exception):
    """A feature whose policy is ``reject`` is older than its SLA."""

    def __init__(self, view: str, feature: str, age_s: float, sla_s: float) -> None:
        super().__init__(f"feature '{feature}' (view '{view}') is stale: its online value is {age_s:.0f} s old, "
                         f"its SLA is {sla_s:.0f} s and its policy is reject")
        self.view, self.feature, self.age_s, self.sla_s = view, feature, age_s, sla_s


@dataclass(frozen=True)
class ViewPlan:
    name: str
    online_name: str
    keys: tuple[str, ...]
    # (feature name, default, sla seconds or None, on_stale)
    features: tuple[tuple[str, Any, float | None, str], ...]
    min_sla_s: float | None
    key_types: tuple[str, ...] = ()

    def probe_key(self) -> tuple[Any, ...]:
        """A key of the keys' own types that no entity has (the store's readiness probe)."""
        types = self.key_types or ("string",) * len(self.keys)
        return tuple(-1 if t in ("int", "bigint") else "__probe__" for t in types)


@dataclass
class ResolvedRow:
    values: dict[str, Any]
    report: dict[str, dict[str, Any]]
    issues: list[str] = field(default_factory=list)
    """Human-readable reasons that lower confidence: stale served, defaults used."""
    store_failed: bool = False


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value)


class FeatureResolver:
    """Compiled once per use case; ``resolve`` is the per-request hot path (plain dicts, no frames)."""

    def __init__(self, features: FeatureSet, defaults: dict[str, float] | None = None) -> None:
        defaults = defaults or {}
        self.views = []
        for view in features.batch_views:
            plans = tuple((f.name, defaults.get(f.name, f.default), f.sla.total_seconds() if f.sla else None,
                           f.on_stale) for f in view.features)
            slas = [p[2] for p in plans if p[2] is not None]
            self.views.append(ViewPlan(view.name, online_view_name(features.usecase, view.name), view.keys, plans,
                                       min(slas) if slas else None, tuple(view.key_types)))
        self.request_features = [(f.name, compile_python(f.expr), defaults.get(f.name))
                                 for v in features.request_views for f in v.features]
        self.feature_names = [f for v in self.views for f, *_ in v.features] + [n for n, _, _ in self.request_features]

    def keys(self, row: dict[str, Any]) -> dict[str, tuple | None]:
        """{online view name: entity key or None when a key column is null}."""
        out = {}
        for view in self.views:
            key = tuple(row[k] for k in view.keys)
            out[view.online_name] = None if any(k is None for k in key) else key
        return out

    def resolve(self, row: dict[str, Any], keys: dict[str, tuple | None],
                results: dict[str, ReadResult] | None) -> ResolvedRow:
        """Feature values for one row. ``results`` = {online view: ReadResult}, or None when the store failed."""
        values: dict[str, Any] = {}
        report: dict[str, dict[str, Any]] = {}
        issues: list[str] = []
        for view in self.views:
            result = results.get(view.online_name) if results is not None else None
            if result is None or not result.found:
                status = ("unavailable" if results is None else
                          "no_key" if keys[view.online_name] is None else "missing")
                for name, default, _, _ in view.features:
                    values[name] = default
                report[view.name] = {"age_seconds": None, "status": status, "action": "default",
                                     "stale_features": {}}
                issues.append(f"{view.name}: {status}, defaults used")
                continue
            age = result.age_seconds
            stored = result.values or {}
            if view.min_sla_s is None or age is None or age <= view.min_sla_s:
                # Fast path: every feature of the view is within its SLA.
                for name, default, _, _ in view.features:
                    v = stored.get(name)
                    values[name] = default if v is None else v
                report[view.name] = {"age_seconds": age, "status": "fresh", "action": "none", "stale_features": {}}
                continue
            stale: dict[str, str] = {}
            for name, default, sla, policy in view.features:
                v = stored.get(name)
                if sla is not None and age > sla:
                    if policy == "reject":
                        raise StaleFeature(view.name, name, age, sla)
                    stale[name] = policy
                    if policy == "use_default":
                        v = None
                values[name] = default if v is None else v
            actions = set(stale.values())
            action = "use_default" if actions == {"use_default"} else "serve_stale"
            report[view.name] = {"age_seconds": age, "status": "stale", "action": action, "stale_features": stale}
            issues.append(f"{view.name}: {len(stale)} feature(s) stale ({age / 3600:.1f} h old): "
                          + ", ".join(f"{n} {p}" for n, p in stale.items()))
        for name, fn, default in self.request_features:
            value = fn(row)
            values[name] = default if value is None and default is not None else value
        return ResolvedRow(values, report, issues, results is None)

    def vector(self, values: dict[str, Any], order: list[str]) -> list[float]:
        """Numbers in the model's feature order (null -> NaN, XGBoost's missing value)."""
        return [_number(values[name]) for name in order]
