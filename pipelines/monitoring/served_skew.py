"""Served-feature skew: the features the prediction API actually used, against their offline computation.

For a deterministic sample of served predictions (the lake table ``served__<usecase>``, built from the API's
prediction log), every request feature is recomputed with the Spark compiler from the logged request columns,
and every batch-view feature is taken offline as of the request's time (``as_of``) with the point-in-time
join training uses (the published offline feature tables, the view's TTL, then the spec's defaults). Each
served value is compared with its offline value: exact for ints, strings and bools, 1e-9 relative for
doubles, null only equals null (NaN counts as null: the prediction log cannot hold it).

Some differences are known serving conditions, not computation skew, and are reported apart, never
counted as mismatches (per row and view):

* ``unavailable``: the online store could not be read (down, timeout, open circuit): defaults were served;
* ``missing_online``: the store had no row for the key although the offline as-of row exists (a
  materialization gap): defaults were served;
* ``future_row``: the online row is newer than the request's time (a simulated clock behind the store);
* ``past_ttl``: the row served is older than the view's TTL, where training would have used the defaults;
* ``different_row``: the online row's event time is not the offline as-of row's (materialization lag);
* ``stale_default`` (per feature): older than the feature's SLA with policy ``use_default``: the default
  was served by policy.

Rows with status ``no_key`` (a null key column) or ``missing`` with no offline row either are compared: both
sides must give the defaults. The check fails (:class:`ServedSkewDetected`) when a feature's mismatch rate
exceeds the spec's ``skew_check.max_mismatch_rate``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.featurestore.offline import EVENT_TIME, as_of_join, feature_table_name
from pipelines.featurestore.skew import REL_TOLERANCE, SkewDetected
from pipelines.featurestore.spec import FeatureSet
from pipelines.lake.tables import Lake, safe_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["CONDITIONS", "ConditionCount", "FeatureCheck", "ServedFeatureSkew", "ServedRow", "ServedSkewDetected",
           "ServedSkewReport", "ViewCheck", "compare_served", "served_skew", "serving_condition", "values_match"]

REQUIRED_COLUMNS = ("request_id", "as_of", "model_version", "request", "features", "feature_status",
                    "feature_age_s")
MAX_EXAMPLES = 5
# Ages are logged as float seconds from microsecond event times: a millisecond apart is another row.
AGE_TOLERANCE_S = 1e-3

CONDITIONS = {
    "unavailable": "the online store could not be read: the view's defaults were served",
    "missing_online": "no online row for the key, though the offline as-of row exists (materialization gap): "
                      "defaults were served",
    "future_row": "the online row is newer than the request's time (the request's clock is behind the store)",
    "past_ttl": "the row served is older than the view's TTL (training would have used the defaults)",
    "different_row": "the online row is not the offline as-of row (another event time: materialization lag)",
    "stale_default": "older than the feature's SLA with policy use_default: the default was served by policy",
}


class ServedSkewDetected(SkewDetected):
    """A served feature's mismatch rate is above the spec's threshold. ``features`` names them."""

    def __init__(self, report: ServedSkewReport) -> None:
        RuntimeError.__init__(self, f"served-feature skew in {', '.join(report.failed_features)}\n"
                                    + report.to_text())
        self.report = report  # type: ignore[assignment]
        self.features = report.failed_features


# --------------------------------------------------------------------------- the comparison (pure Python)

@dataclass(frozen=True)
class FeatureCheck:
    view: str
    name: str
    dtype: str
    default: Any = None
    sla_s: float | None = None
    on_stale: str = "serve_stale"


@dataclass(frozen=True)
class ViewCheck:
    name: str
    kind: str  # batch | request
    ttl_s: float | None
    features: tuple[FeatureCheck, ...]


@dataclass
class ServedRow:
    """One served prediction with its offline recomputation (``offline_age_s``: as_of - the offline as-of
    row's event time, None when no row qualified)."""

    request_id: str
    as_of: str
    served: Mapping[str, Any]
    offline: Mapping[str, Any]
    status: Mapping[str, str] = field(default_factory=dict)
    served_age_s: Mapping[str, float | None] = field(default_factory=dict)
    offline_age_s: Mapping[str, float | None] = field(default_factory=dict)


@dataclass
class ServedFeatureSkew:
    view: str
    feature: str
    compared: int = 0
    mismatches: int = 0
    largest_differences: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0


@dataclass
class ConditionCount:
    view: str
    condition: str
    rows: int = 0
    features: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    """Request ids."""

    @property
    def meaning(self) -> str:
        return CONDITIONS[self.condition]


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def values_match(served: Any, offline: Any, dtype: str) -> bool:
    """Exact for ints, strings and bools; 1e-9 relative for doubles; null (or NaN) only equals null."""
    served, offline = _clean(served), _clean(offline)
    if served is None or offline is None:
        return served is None and offline is None
    if dtype == "double":
        if isinstance(served, (str, bool)) or isinstance(offline, (str, bool)):
            return False
        a, b = float(served), float(offline)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= REL_TOLERANCE * max(abs(a), abs(b), 1e-300)
    if dtype == "int":
        # A JSON log may hand an int back as 3.0; 3.5 or True is not the int 3.
        if isinstance(served, bool) or isinstance(offline, bool):
            return False
        if isinstance(served, float) and not served.is_integer():
            return False
        if isinstance(offline, float) and not offline.is_integer():
            return False
        return int(served) == int(offline)
    return type(served) is type(offline) and served == offline


def _difference(served: Any, offline: Any) -> float | None:
    served, offline = _clean(served), _clean(offline)
    if any(v is None or isinstance(v, (str, bool)) for v in (served, offline)):
        return None
    try:
        diff = abs(float(served) - float(offline))
    except (TypeError, ValueError):
        return None
    return None if math.isnan(diff) else diff


def serving_condition(view: ViewCheck, status: str | None, served_age_s: float | None,
                      offline_age_s: float | None) -> str | None:
    """The known serving condition of a row's batch view, or None when its values must equal offline."""
    if status == "unavailable":
        return "unavailable"
    if status == "missing":
        return "missing_online" if offline_age_s is not None else None
    if status in ("fresh", "stale") and served_age_s is not None:
        if served_age_s < 0:
            return "future_row"
        if view.ttl_s is not None and served_age_s >= view.ttl_s:
            return "past_ttl"
        if offline_age_s is None or abs(served_age_s - offline_age_s) > AGE_TOLERANCE_S:
            return "different_row"
    return None


def _policy_default(feature: FeatureCheck, status: str | None, served_age_s: float | None) -> bool:
    return (status == "stale" and feature.on_stale == "use_default" and feature.sla_s is not None
            and served_age_s is not None and served_age_s > feature.sla_s)


def compare_served(rows: Iterable[ServedRow], views: Sequence[ViewCheck], *, max_examples: int = MAX_EXAMPLES,
                   ) -> tuple[list[ServedFeatureSkew], list[ConditionCount]]:
    """Per feature: compared, mismatches, the largest absolute differences and examples; per view and known
    serving condition: the rows set aside (never counted as mismatches)."""
    skews = {f.name: ServedFeatureSkew(v.name, f.name) for v in views for f in v.features}
    largest: dict[str, list[tuple[float, int, dict[str, Any]]]] = {name: [] for name in skews}
    conditions: dict[tuple[str, str], ConditionCount] = {}
    seq = 0

    def set_aside(view: str, condition: str, row: ServedRow, features: Sequence[str]) -> None:
        count = conditions.setdefault((view, condition), ConditionCount(view, condition))
        count.rows += 1
        count.features = sorted(set(count.features) | set(features))
        if len(count.examples) < max_examples:
            count.examples.append(row.request_id)

    for row in rows:
        for view in views:
            status = row.status.get(view.name) if view.kind == "batch" else None
            served_age = row.served_age_s.get(view.name) if view.kind == "batch" else None
            if view.kind == "batch":
                condition = serving_condition(view, status, served_age, row.offline_age_s.get(view.name))
                if condition is not None:
                    set_aside(view.name, condition, row, [f.name for f in view.features])
                    continue
                by_policy = [f.name for f in view.features if _policy_default(f, status, served_age)]
                if by_policy:
                    set_aside(view.name, "stale_default", row, by_policy)
            else:
                by_policy = []
            for feature in view.features:
                if feature.name in by_policy:
                    continue
                skew = skews[feature.name]
                served, offline = _clean(row.served.get(feature.name)), _clean(row.offline.get(feature.name))
                skew.compared += 1
                if values_match(served, offline, feature.dtype):
                    continue
                skew.mismatches += 1
                example = {"request_id": row.request_id, "as_of": row.as_of, "served": served, "offline": offline}
                if len(skew.examples) < max_examples:
                    skew.examples.append(example)
                diff = _difference(served, offline)
                if diff is not None:
                    seq += 1
                    item = (diff, -seq, {**example, "abs_diff": diff})
                    heap = largest[feature.name]
                    if len(heap) < max_examples:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heappushpop(heap, item)
    for name, heap in largest.items():
        skews[name].largest_differences = [entry for _, _, entry in sorted(heap, reverse=True)]
    return list(skews.values()), sorted(conditions.values(), key=lambda c: (c.view, c.condition))


def view_checks(features: FeatureSet) -> list[ViewCheck]:
    return [ViewCheck(v.name, v.kind, v.ttl.total_seconds() if v.ttl else None,
                      tuple(FeatureCheck(v.name, f.name, f.dtype, f.default,
                                         f.sla.total_seconds() if f.sla else None, f.on_stale)
                            for f in v.features))
            for v in features.views.values()]


# ------------------------------------------------------------------------------------------------ the report

@dataclass
class ServedSkewReport:
    usecase: str
    run_id: str
    checked_at: str
    threshold: float
    served_rows: int
    sampled: int
    seed: int
    as_of_range: list[str | None]
    model_versions: dict[str, int]
    features: list[ServedFeatureSkew]
    conditions: list[ConditionCount]

    @property
    def failed_features(self) -> list[str]:
        return [f.feature for f in self.features if f.rate > self.threshold]

    @property
    def success(self) -> bool:
        return not self.failed_features

    def feature(self, name: str) -> ServedFeatureSkew:
        return next(f for f in self.features if f.feature == name)

    def condition_rows(self, view: str, condition: str) -> int:
        return sum(c.rows for c in self.conditions if c.view == view and c.condition == condition)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["success"], data["failed_features"] = self.success, self.failed_features
        for f, out in zip(self.features, data["features"], strict=True):
            out["rate"] = f.rate
        for c, out in zip(self.conditions, data["conditions"], strict=True):
            out["meaning"] = c.meaning
        return data

    def to_text(self) -> str:
        start, end = self.as_of_range
        versions = ", ".join(f"v{k}: {n}" for k, n in sorted(self.model_versions.items())) or "none"
        lines = [f"served-feature skew check {'PASSED' if self.success else 'FAILED'} for {self.usecase} run "
                 f"{self.run_id}: {self.sampled} of {self.served_rows} served predictions sampled (seed {self.seed}),"
                 f" as_of {start} .. {end}, model versions {versions}; threshold {self.threshold:.2%} per feature"]
        if self.failed_features:
            lines.append(f"  skew in: {', '.join(self.failed_features)}")
        for f in self.features:
            flag = "FAIL" if f.rate > self.threshold else "ok  "
            line = f"  {flag} {f.view}.{f.feature}: {f.mismatches}/{f.compared} mismatched ({f.rate:.2%})"
            if f.compared == 0:
                line += " (nothing compared)"
            if f.largest_differences:
                line += "; largest |diff| " + ", ".join(f"{d['abs_diff']:.6g} ({d['request_id']}: served "
                                                        f"{d['served']!r}, offline {d['offline']!r})"
                                                        for d in f.largest_differences[:3])
            elif f.examples:
                line += "; e.g. " + ", ".join(f"{e['request_id']}: served {e['served']!r}, offline "
                                              f"{e['offline']!r}" for e in f.examples[:3])
            lines.append(line)
        if self.conditions:
            lines.append("known serving conditions, set aside (not compared, not counted as mismatches):")
            for c in self.conditions:
                what = f" ({', '.join(c.features)})" if c.condition == "stale_default" else ""
                lines.append(f"  {c.view}: {c.condition}{what}: {c.rows} row(s): {c.meaning}; "
                             f"e.g. {', '.join(c.examples[:3])}")
        else:
            lines.append("known serving conditions: none (every sampled row's features were compared)")
        return "\n".join(lines)


def save_report(lake: Lake, report: ServedSkewReport, home: Path | str | None = None) -> Path:
    """The lake dataset ``_reports/served_skew/usecase=/run_id=/`` (one row per feature, the full report as
    ``_report.json`` and ``_report.txt`` beside it), and with ``home`` the text and JSON under
    ``<home>/reports/<usecase>/served_skew/``. Returns the dataset folder."""
    import pandas as pd

    run = safe_name(report.run_id)
    text, data = report.to_text() + "\n", json.dumps(report.to_dict(), indent=2, default=str)
    dataset = lake.root / "_reports" / "served_skew" / f"usecase={report.usecase}" / f"run_id={run}"
    dataset.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{"checked_at": report.checked_at, "view": f.view, "feature": f.feature,
                           "compared": f.compared, "mismatches": f.mismatches, "rate": f.rate,
                           "max_abs_diff": f.largest_differences[0]["abs_diff"] if f.largest_differences else None,
                           "threshold": report.threshold, "sampled": report.sampled} for f in report.features])
    tmp = dataset / ".part.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(dataset / "part.parquet")
    # Spark skips files starting with "_" when it reads the dataset.
    (dataset / "_report.json").write_text(data)
    (dataset / "_report.txt").write_text(text)
    if home is not None:
        folder = Path(home) / "reports" / report.usecase / "served_skew"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{run}.txt").write_text(text)
        (folder / f"{run}.json").write_text(data)
    return dataset


# ------------------------------------------------------------------------------------ the offline side (Spark)

def _check_contract(served: DataFrame, features: FeatureSet) -> None:
    from pyspark.sql.types import MapType, StructType

    schema = served.schema
    problems = [f"column '{c}' is missing" for c in REQUIRED_COLUMNS if c not in schema.names]
    if not problems:
        request, feats = schema["request"].dataType, schema["features"].dataType
        if not isinstance(request, StructType) or not isinstance(feats, StructType):
            problems.append("'request' and 'features' must be structs")
        else:
            needed = sorted({k for v in features.batch_views for k in v.keys}
                            | {c for v in features.request_views for f in v.features for c in f.expr.columns})
            problems += [f"request.{c} is missing" for c in needed if c not in request.names]
            problems += [f"features.{n} is missing" for n in features.feature_names if n not in feats.names]
        for c in ("feature_status", "feature_age_s"):
            if not isinstance(schema[c].dataType, MapType):
                problems.append(f"'{c}' must be a map")
    if problems:
        raise ValueError("served predictions do not follow the contract: " + "; ".join(problems))


def served_skew(spark: SparkSession, lake: Lake, features: FeatureSet, served: DataFrame, *, sample: int, seed: int,
                run_id: str, home: Path | str | None = None) -> ServedSkewReport:
    """Compare a deterministic sample of served predictions with their offline recomputation; save the report
    (lake dataset, and text + JSON under ``<home>/reports/`` when ``home`` is given). Raises
    :class:`ServedSkewDetected` when a feature's mismatch rate is above the spec's threshold."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.features.dsl import with_features

    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    _check_contract(served, features)
    served = served.where(F.col("request_id").isNotNull() & F.col("as_of").isNotNull())
    served_rows = served.count()
    # The same served rows and seed give the same sample: a hash order, ties broken by the request id.
    picked = (served.withColumn("__order", F.xxhash64(F.col("request_id"), F.lit(f"atelier-served-skew-{seed}")))
              .orderBy("__order", "request_id").limit(sample)
              .select("request_id", "as_of", "model_version", "request", "features", "feature_status",
                      "feature_age_s", "__order")
              .cache())
    try:
        dupes = picked.groupBy("request_id").count().where(F.col("count") > 1).limit(3).collect()
        if dupes:
            raise ValueError(f"request_id is not unique among served predictions: {[r[0] for r in dupes]}")
        bounds = picked.agg(F.min(F.unix_micros("as_of")), F.max(F.unix_micros("as_of")),
                            F.date_format(F.min("as_of"), "yyyy-MM-dd'T'HH:mm:ss'Z'"),
                            F.date_format(F.max("as_of"), "yyyy-MM-dd'T'HH:mm:ss'Z'")).first()
        labels = picked.select("request_id", "as_of", "request.*")
        result = picked.select("request_id", "__order", "model_version", "feature_status", "feature_age_s",
                               F.date_format("as_of", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'").alias("__as_of"),
                               *[F.col(f"features.{n}").alias(f"__served__{n}") for n in features.feature_names])
        request_features = [f.expr for v in features.request_views for f in v.features]
        if request_features:
            recomputed = with_features(labels, request_features).select(
                F.col("request_id").alias("__rid"), *[f.name for f in request_features])
            result = result.join(recomputed, result["request_id"] == recomputed["__rid"], "left").drop("__rid")
        for view in features.batch_views:
            if bounds[0] is None:
                break
            table = spark.read.parquet(lake.path(feature_table_name(features.usecase, view.name)))
            # Only the sampled keys and the rows a sampled time can see (the join itself applies the TTL).
            keys = labels.select(*view.keys).dropna(subset=list(view.keys)).distinct()
            table = table.join(F.broadcast(keys), list(view.keys), "left_semi").where(
                F.unix_micros(F.col(EVENT_TIME)) <= F.lit(bounds[1]))
            if view.ttl is not None:
                table = table.where(F.unix_micros(F.col(EVENT_TIME))
                                    > F.lit(bounds[0] - int(view.ttl.total_seconds() * 1e6)))
            joined = as_of_join(labels, table, view, "as_of", "request_id")
            event = f"{view.name}__event_time"
            joined = joined.join(labels.select(F.col("request_id").alias("__row_id"), "as_of"), "__row_id").select(
                "__row_id",
                # The spec's defaults, as training applies them to a missing or expired row.
                *[F.coalesce(F.col(f.name), F.lit(f.default).cast(joined.schema[f.name].dataType)).alias(f.name)
                  for f in view.features],
                ((F.unix_micros("as_of") - F.unix_micros(event)) / 1e6).alias(f"__offline_age__{view.name}"))
            result = result.join(joined, result["request_id"] == joined["__row_id"], "left").drop("__row_id")
        collected = result.orderBy("__order", "request_id").collect()
    finally:
        picked.unpersist()

    batch_names = [v.name for v in features.batch_views]
    rows, versions = [], {}
    for r in collected:
        d = r.asDict()
        versions[str(d["model_version"])] = versions.get(str(d["model_version"]), 0) + 1
        rows.append(ServedRow(
            request_id=d["request_id"], as_of=d["__as_of"],
            served={n: d[f"__served__{n}"] for n in features.feature_names},
            offline={n: d.get(n) for n in features.feature_names},
            status=dict(d["feature_status"] or {}), served_age_s=dict(d["feature_age_s"] or {}),
            offline_age_s={v: d.get(f"__offline_age__{v}") for v in batch_names}))
    skews, conditions = compare_served(rows, view_checks(features))
    report = ServedSkewReport(
        usecase=features.usecase, run_id=run_id, checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        threshold=features.skew_check.max_mismatch_rate, served_rows=served_rows, sampled=len(rows), seed=seed,
        as_of_range=[bounds[2], bounds[3]], model_versions=versions, features=skews, conditions=conditions)
    save_report(lake, report, home)
    if not report.success:
        raise ServedSkewDetected(report)
    return report
