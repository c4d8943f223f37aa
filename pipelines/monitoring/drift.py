"""D3-style drift and data-quality monitoring on Spark: profiles, indicators, anomalies, findings, incidents.

A run over an interval of days (the DAG ``monitoring_drift``: one day, or a backfill range):

1. **Profiles** (``pipelines/monitoring/profiles.py``): one Spark scan per source over the interval, every
   segment and cross of ``monitoring.yaml`` in the same ``GROUPING SETS`` pass, stored as mergeable daily
   rows (KLL quantile sketches, HLL distinct counts, sums, category counts) in ``profiles__<usecase>``:

   * ``served``   the prediction log (``served__<usecase>``): the request fields, every feature as served,
                  the prediction, its interval width, the degraded / fallback flags;
   * ``outcomes`` the served predictions with their outcomes (``feedback__<usecase>``): actual, error,
                  absolute error, interval coverage;
   * ``lake.<table>`` the lake tables behind the features, by their day column.

   The week before a day and the week ending on it are merged from the dailies, never rescanned.
2. **Indicators** (``indicators.py``): every (source, column, segment value, statistic): counts, null rates,
   moments, quantiles, distinct counts, category shares, and PSI / KS / normed Wasserstein / Jensen-Shannon
   against the model's training reference (``reference.py``, stored with the model) and the trailing week.
   Stored in ``indicators__<usecase>`` (the history the next runs learn from).
3. **Anomalies** (``anomaly.py``): each indicator against its own history: the last ``window_days`` values
   (the served sources' history starts with the reference period's own days, so a new model is judged from
   its first day), robust median / MAD, the weekday's own baseline once enough weeks exist. Severity = the
   learned one, capped by the spec's effect sizes for drift statistics; fixed rules (null-rate increase,
   unseen categories, online MAE, empty day) apply from the first day. Findings go to ``findings__<usecase>``.
4. **Incidents and retraining**: a drift finding at ``retrain.min_severity`` on the served data (or the online
   MAE above its bound) opens an incident unless one is open within the cool-down; each incident asks for one
   retraining (``retrain.<usecase>``, emitted by the DAG) on the window ending with its first day. Data
   quality findings alert but never retrain (a model retrained on broken data learns the break).
5. **Report**: an Evidently report of the most drifted features against the reference for the interval's last
   day (and each day an incident opened), under ``<home>/reports/<usecase>/drift/<day>/`` and logged to the
   serving version's MLflow run.

Re-running an interval replaces exactly its days in every table: the same keys and the same values, except
that quantiles (and the distances computed from them) agree only within the KLL sketches' rank error (their
compaction is randomized).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import Settings
from pipelines.lake.tables import Lake, TableNotFound, write_partition_manifest
from pipelines.monitoring import anomaly, drift_stats
from pipelines.monitoring.drift_spec import SEVERITY_NAMES, MonitoringSpec, load_monitoring_spec
from pipelines.monitoring.indicators import INDEX, compute_indicators, statistic_kind
from pipelines.monitoring.profiles import bucket_column, merge_window, profile_frame, with_quantiles

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame, SparkSession

    from pipelines.featurestore.spec import FeatureSet
    from pipelines.usecases import UseCase

__all__ = ["DriftResult", "findings_table", "incidents_table", "indicators_table", "profiles_table", "run_drift"]

log = logging.getLogger("atelier.drift")

SERVED, OUTCOMES = "served", "outcomes"
MODEL_SOURCES = (SERVED, OUTCOMES)
REQUEST_PREFIX = "request."
OUTCOME_PREFIX = "outcome."
FLAGS = ("degraded", "fallback", "views_defaulted", "views_stale")
WHOLE_DAY = "1970-01-01"  # the day a merged reference's rows carry
FINDING_COLUMNS = ["day", "source", "column", "segment", "segment_value", "statistic", "kind", "severity",
                   "value", "baseline", "scale", "z", "n_rows", "n_history", "model_version", "message"]


def profiles_table(usecase: str) -> str:
    return f"profiles__{usecase}"


def indicators_table(usecase: str) -> str:
    return f"indicators__{usecase}"


def findings_table(usecase: str) -> str:
    return f"findings__{usecase}"


def incidents_table(usecase: str) -> str:
    return f"incidents__{usecase}"


def run_dir(settings: Settings, usecase: str) -> Path:
    return settings.home_path / "monitoring" / usecase


def _days(start: date, end: date) -> list[str]:
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]


def _shift(day: str, days: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()


# ----------------------------------------------------------------------------------------------- results


@dataclass
class DriftResult:
    usecase: str
    run_id: str
    interval: list[str]
    model: str | None
    versions: dict[str, str | None]
    reference: str | None
    rows_scanned: dict[str, int]
    indicators: dict[str, int]
    findings: dict[str, dict[str, int]]
    top_findings: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    retrain: list[dict[str, Any]]
    reports: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def indicators_total(self) -> int:
        return sum(self.indicators.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        severities = Counter()
        for per_day in self.findings.values():
            severities.update(per_day)
        lines = [f"drift {self.usecase} {self.interval[0]}..{self.interval[-1]} (run {self.run_id}), model "
                 f"{self.model} versions {sorted({v for v in self.versions.values() if v})}, reference "
                 f"{self.reference or 'none (the version was trained without one)'}",
                 "  rows scanned: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.rows_scanned.items())),
                 f"  indicators evaluated: {self.indicators_total:,} ({min(self.indicators.values(), default=0):,}"
                 f"..{max(self.indicators.values(), default=0):,} a day)",
                 "  findings: " + (", ".join(f"{s} {severities[s]:,}" for s in ("high", "medium", "low")
                                            if severities[s]) or "none")]
        for f in self.top_findings[:10]:
            lines.append(f"    {f['day']} {f['severity']:<6} {f['message']}")
        for inc in self.incidents:
            lines.append(f"  incident {inc['incident_id']}: {inc['first_day']}..{inc['last_day']}, "
                         f"{inc['findings']} finding(s): {inc['reason']}")
        for r in self.retrain:
            lines.append(f"  retraining requested for {r['incident_id']}: window {r['params']['start']}.."
                         f"{r['params']['end']}")
        for day, url in sorted(self.reports.items()):
            lines.append(f"  report {day}: {url}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- source frames


@dataclass(frozen=True)
class _Source:
    name: str
    frame: DataFrame
    day: Column
    numeric: dict[str, Column]
    categorical: dict[str, Column]
    segments: dict[str, Column]
    plain: frozenset[str] = frozenset()  # 0/1 flags: counts and means only


def _served_columns(usecase: UseCase, features: FeatureSet, spec: MonitoringSpec
                    ) -> tuple[list[str], list[str], list[str]]:
    """(numeric request columns, categorical request columns, features) of the served data."""
    from pipelines.interface import outcome_key_columns, request_columns

    request = {**request_columns(usecase, features), **outcome_key_columns(usecase, features)}
    numeric = [c for c, (t, _) in request.items() if t in ("double", "int", "bigint")
               and c not in spec.exclude and c not in spec.categorical]
    return numeric, list(spec.categorical), list(features.feature_names)


def _flat_served(served: DataFrame, request_cols: list[str], features: list[str], levels: list[str]) -> DataFrame:
    """The served table with request fields and features as top-level columns (the reference's shape)."""
    from pyspark.sql import functions as F  # noqa: N812

    have = {f.name for f in served.schema["request"].dataType.fields}
    cols = [F.col(f"request.{c}").alias(f"{REQUEST_PREFIX}{c}") for c in request_cols if c in have]
    cols += [F.col(f"features.{f}").alias(f) for f in features]
    extra = []
    if "upper_90" in served.columns and "lower_90" in served.columns:
        extra.append((F.col("upper_90") - F.col("lower_90")).alias("width_90"))
    return served.select("request_id", F.col("served_date").cast("string").alias("day"), "model_name",
                         "model_version", "prediction", *extra,
                         F.col("degraded").cast("double").alias("degraded"),
                         F.col("fallback").cast("double").alias("fallback"),
                         F.col("views_defaulted").cast("double").alias("views_defaulted"),
                         F.col("views_stale").cast("double").alias("views_stale"), *cols)


def _segment_exprs(frame: DataFrame, spec: MonitoringSpec, request_cols: set[str]) -> dict[str, Column]:
    from pyspark.sql import functions as F  # noqa: N812

    out = {}
    for name, seg in spec.segments.items():
        column = f"{REQUEST_PREFIX}{seg.column}" if seg.column in request_cols else seg.column
        if column in frame.columns:
            out[name] = bucket_column(F.col(f"`{column}`"), seg)
    return out


def _model_sources(flat: DataFrame, outcomes: DataFrame | None, spec: MonitoringSpec, request_numeric: list[str],
                   request_categorical: list[str], features: list[str]) -> list[_Source]:
    """The served (or reference) frame and its outcomes as profile sources."""
    from pyspark.sql import functions as F  # noqa: N812

    request = set(request_numeric) | set(request_categorical) | {s.column for s in spec.segments.values()
                                                                  if f"{REQUEST_PREFIX}{s.column}" in flat.columns}
    segments = _segment_exprs(flat, spec, request)
    numeric = {name: F.col(f"`{name}`") for name in
               [f"{REQUEST_PREFIX}{c}" for c in request_numeric] + features +
               ["prediction", "width_90", *FLAGS]
               if name in flat.columns}
    categorical = {f"{REQUEST_PREFIX}{c}": F.col(f"`{REQUEST_PREFIX}{c}`") for c in request_categorical
                   if f"{REQUEST_PREFIX}{c}" in flat.columns}
    sources = [_Source(SERVED, flat, F.col("day"), numeric, categorical, segments, frozenset(FLAGS))]
    if outcomes is not None:
        osegs = _segment_exprs(outcomes, spec, request)
        onum = {f"{OUTCOME_PREFIX}{c}": F.col(c) for c in ("actual", "error", "abs_error", "covered_90")
                if c in outcomes.columns}
        sources.append(_Source(OUTCOMES, outcomes, F.col("day"), onum, {}, osegs,
                               frozenset({f"{OUTCOME_PREFIX}covered_90"})))
    return sources


def _lake_sources(spark: SparkSession, lake: Lake, usecase: UseCase, spec: MonitoringSpec, days: list[str]
                  ) -> list[_Source]:
    from pyspark.sql import functions as F  # noqa: N812

    out = []
    for table, source in spec.sources.items():
        if lake.current_version(table) is None:
            log.warning("lake table %s is not published: not profiled", table)
            continue
        # Each day's partition is read with its own columns (a feature absent from a partition is null).
        if lake.info(table).partition_by[:1] == [source.day]:
            frame = lake.read_partitions(spark, table, source.day, days, merge_schema=True)
            if frame is None:
                continue
        else:
            frame = spark.read.option("mergeSchema", "true").parquet(lake.path(table))
        frame = frame.withColumn("_day", F.col(source.day).cast("string")).where(F.col("_day").isin(days))
        schema = usecase.tables[table].output_schema
        seg_columns = set(source.segments.values())
        numeric = {f"{table}.{c}": (F.col(c) if c in frame.columns else F.lit(None).cast("double"))
                   for c, t in schema.items() if t in ("int", "bigint", "double") and c not in source.exclude}
        categorical = {f"{table}.{c}": (F.col(c) if c in frame.columns else F.lit(None).cast("string"))
                       for c, t in schema.items() if t == "string" and c in seg_columns and c not in source.exclude}
        segments = {name: bucket_column(F.col(col), spec.segments[name]) for name, col in source.segments.items()
                    if col in frame.columns}
        out.append(_Source(f"lake.{table}", frame, F.col("_day"), numeric, categorical, segments))
    return out


def _profile(sources: list[_Source], spec: MonitoringSpec) -> DataFrame | None:
    parts = []
    for s in sources:
        grouping = spec.grouping({name: "" for name in s.segments})
        parts.append(profile_frame(s.frame, source=s.name, day=s.day, numeric=s.numeric, categorical=s.categorical,
                                   segments=s.segments, grouping=grouping, plain=s.plain))
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


# ------------------------------------------------------------------------------------------- reference


def _reference_frames(spark: SparkSession, folder: Path, features: FeatureSet, request_cols: list[str]
                      ) -> tuple[DataFrame, DataFrame]:
    """(features frame, outcomes frame) of the stored reference, shaped like the served data."""
    from pyspark.sql import functions as F  # noqa: N812

    label = features.label
    assert label is not None

    def shaped(path: Path) -> DataFrame:
        frame = spark.read.parquet(str(path))
        renames = [F.col(c).alias(f"{REQUEST_PREFIX}{c}") for c in request_cols if c in frame.columns]
        keep = [F.col(c) for c in frame.columns if c not in request_cols]
        day = F.date_format(F.col(label.event_time), "yyyy-MM-dd").alias("day")
        return frame.select(day, *keep, *renames)

    feats = shaped(folder / "features.parquet")
    preds = shaped(folder / "predictions.parquet").withColumnRenamed(label.column, "actual")
    return feats, preds


def _reference_profiles(spark: SparkSession, settings: Settings, usecase: UseCase, features: FeatureSet,
                        spec: MonitoringSpec, model: str, version: str, request_num: list[str],
                        request_cat: list[str]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(whole-reference rows, the reference period's own daily indicators for history), cached per version."""
    import pandas as pd
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.monitoring.reference import load_reference

    folder = load_reference(settings, usecase.name, model, version)
    if folder is None:
        return None
    cache = folder / "profiles"
    key = json.dumps({"segments": {k: v.model_dump() for k, v in spec.segments.items()},
                      "crosses": spec.crosses, "min_rows": spec.min_rows, "trailing": spec.trailing_days,
                      "window": spec.anomaly.window_days, "ranks": len(drift_stats.RANKS), "code": 4}, sort_keys=True)
    if (cache / "key.json").exists() and (cache / "key.json").read_text() == key:
        return pd.read_parquet(cache / "whole.parquet"), pd.read_parquet(cache / "history.parquet")
    feats, preds = _reference_frames(spark, folder, features, request_num + request_cat)
    # The features come from the training split as serving would have given them, with the model's predictions
    # on them (a reference written before predictions were stored there: the holdout's); the outcome columns
    # from the holdout. Interval widths have no reference: recalibration from the outcomes changes them on
    # purpose (they are judged against their own history).
    pred_cols = ["day", "prediction", *[f"{REQUEST_PREFIX}{c}" for c in request_num + request_cat],
                 *[s.column for s in spec.segments.values()]]
    pred_frame = preds.select(*[F.col(f"`{c}`") for c in dict.fromkeys(pred_cols) if c in preds.columns])
    served_feats = _model_sources(feats, None, spec, request_num, request_cat, list(features.feature_names))[0]
    served_preds = _model_sources(pred_frame, preds, spec, request_num, request_cat, [])
    # Predictions stored with the features are profiled with them: the holdout gives the outcomes only.
    sources = [served_feats, served_preds[1]] if "prediction" in feats.columns else [served_feats, *served_preds]
    daily = _profile(sources, spec)
    assert daily is not None
    daily = daily.cache()
    whole = merge_window(daily.withColumn("day", _const_day()), [WHOLE_DAY], 1)
    whole_q = with_quantiles(whole, drift_stats.RANKS, spec.min_rows).toPandas()
    ref_days = sorted(r[0] for r in daily.select("day").distinct().collect())
    # The reference's own series (for the history the first served days are judged against): its last days.
    tail = ref_days[-spec.anomaly.window_days:]
    windows = _windows(daily, tail, spec, folder / "windows")
    history = []
    for day in tail:
        d, w, p = (_read_day(windows[k], day) for k in WINDOWS)
        for src in MODEL_SOURCES:
            ind = compute_indicators(d[d.source == src], w[w.source == src], p[p.source == src],
                                     whole_q[whole_q.source == src], min_rows=spec.min_rows,
                                            window_days=spec.trailing_days)
            ind["day"] = day
            history.append(ind)
    daily.unpersist()
    shutil.rmtree(folder / "windows", ignore_errors=True)
    history = [h for h in history if not h.empty]
    hist = pd.concat(history, ignore_index=True) if history else pd.DataFrame()
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    whole_q.to_parquet(cache / "whole.parquet", index=False)
    hist.to_parquet(cache / "history.parquet", index=False)
    (cache / "key.json").write_text(key)
    return whole_q, hist


def _const_day() -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    return F.lit(WHOLE_DAY)


WINDOWS = ("day", "week", "previous")


def _windows(daily: DataFrame, days: list[str], spec: MonitoringSpec, folder: Path) -> dict[str, Path]:
    """The day, the trailing week (the day included) and the week before it, for ``days``, with quantiles,
    written under ``folder`` partitioned by day (read back one day at a time)."""
    from pyspark.sql import functions as F  # noqa: N812

    ranks = drift_stats.RANKS
    # The week before D is the week ending on D - 1: one merge gives both.
    before = [_shift(d, -1) for d in days]
    weeks = with_quantiles(merge_window(daily, sorted(set(days) | set(before)), spec.trailing_days), ranks,
                           spec.min_rows)
    weeks = weeks.cache()
    frames = {"day": with_quantiles(daily.where(daily.day.isin(days)), ranks, spec.min_rows),
              "week": weeks.where(F.col("day").isin(days)),
              "previous": weeks.where(F.col("day").isin(before)).withColumn(
                  "day", F.date_add(F.to_date("day"), 1).cast("string")).where(F.col("day").isin(days))}
    out = {}
    for name, frame in frames.items():
        path = folder / name
        shutil.rmtree(path, ignore_errors=True)
        frame.write.mode("overwrite").partitionBy("day").parquet(str(path))
        out[name] = path
    weeks.unpersist()
    return out


def _read_day(path: Path, day: str) -> pd.DataFrame:
    import pandas as pd
    import pyarrow.parquet as pq

    part = path / f"day={day}"
    if not part.is_dir():
        return pd.DataFrame(columns=[*INDEX, "kind", "rows", "nulls", "n", "sum", "sum_sq", "min", "max", "freqs",
                                     "quantiles", "distinct", "days_merged"])
    return pq.read_table(part).to_pandas()


# --------------------------------------------------------------------------------------------- history


class _History:
    """Each indicator's recent values, oldest first: keys x days (NaN where a day had no value)."""

    def __init__(self, window: int) -> None:
        import pandas as pd

        self.window = window
        self.keys = pd.Index([], dtype=object)
        self.columns: list[np.ndarray] = []
        self.weekdays: list[int] = []

    def add(self, keys: pd.Index, values: np.ndarray, weekday: int) -> None:
        new = keys.difference(self.keys)
        if len(new):
            self.keys = self.keys.append(new)
            self.columns = [np.concatenate([c, np.full(len(new), np.nan)]) for c in self.columns]
        column = np.full(len(self.keys), np.nan)
        column[self.keys.get_indexer(keys)] = values
        self.columns.append(column)
        self.weekdays.append(weekday)
        if len(self.columns) > self.window:
            self.columns, self.weekdays = self.columns[-self.window:], self.weekdays[-self.window:]

    def matrix(self, keys: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        if not self.columns:
            return np.full((len(keys), 0), np.nan), np.zeros(0, dtype=int)
        idx = self.keys.get_indexer(keys)
        stacked = np.stack(self.columns, axis=1)
        out = np.where((idx >= 0)[:, None], stacked[np.clip(idx, 0, None)], np.nan)
        return out, np.asarray(self.weekdays, dtype=int)


def _keys(frame: pd.DataFrame) -> pd.Index:
    import pandas as pd

    return pd.Index(frame["source"] + "|" + frame["column"] + "|" + frame["segment"] + "|" + frame["segment_value"]
                    + "|" + frame["statistic"])


def _seed(history: _History, frames: list[pd.DataFrame]) -> None:
    """Add earlier days' indicator rows (``day`` column) to the history, oldest first."""
    parts = [part for frame in frames for _, part in frame.groupby("day", sort=False)]
    for part in sorted(parts, key=lambda p: p["day"].iat[0]):
        history.add(_keys(part), part["value"].to_numpy(float), date.fromisoformat(part["day"].iat[0]).weekday())


# ------------------------------------------------------------------------------------------- judgement

_UP = {"null_rate", "unseen_share"}
_ABS_FLOOR = {"null_rate": 0.005, "unseen_share": 0.005, "top_share": 0.02, "rows": 5.0, "distinct": 2.0}
_LOCATION = {"mean", "min", "max", "std", "p01", "p05", "p25", "p50", "p75", "p95", "p99"}
_DRIFT_LEVELS = {"psi": "psi", "ks": "ks", "wasserstein": "wasserstein", "js": "js"}


def _judge(ind: pd.DataFrame, history: _History, weekday: int, spec: MonitoringSpec) -> pd.DataFrame:
    """Severity, baseline, scale and z of each indicator of one day (``ind`` gains those columns)."""
    keys = _keys(ind)
    hist, weekdays = history.matrix(keys)
    stat = ind["statistic"].to_numpy()
    values = ind["value"].to_numpy(float)
    # Location statistics are judged on a scale no finer than a tenth of the column's spread that day.
    std_map = ind[ind["statistic"] == "std"].set_index(INDEX)["value"]
    spread = std_map.reindex(list(zip(*(ind[c] for c in INDEX), strict=True))).to_numpy(float)
    floor = np.array([_ABS_FLOOR.get(s, 0.02 if statistic_kind(s) == "drift" else 0.0) for s in stat])
    loc = np.isin(stat, list(_LOCATION))
    floor = np.where(loc, np.nan_to_num(0.1 * spread, nan=0.0), floor)
    a = spec.anomaly
    cfg = anomaly.AnomalyConfig(window_days=a.window_days, min_history=a.min_history,
                                seasonal_min_weeks=a.seasonal_min_weeks, z_low=a.z_low, z_medium=a.z_medium,
                                z_high=a.z_high, min_scale_rel=a.min_scale_rel)
    drift = np.array([statistic_kind(s) == "drift" for s in stat])
    up = drift | np.isin(stat, list(_UP))
    both = anomaly.score(hist, values, weekdays, weekday, cfg, abs_floor=floor, direction="both")
    upward = anomaly.score(hist, values, weekdays, weekday, cfg, abs_floor=floor, direction="up")
    learned = np.where(up, upward.severity, both.severity)
    severity = np.minimum(learned, 2)  # moments and counts alone are at most medium
    # Drift distances: unusual for this indicator (learned) and large enough to matter (the spec's effect size).
    for prefix, level_name in _DRIFT_LEVELS.items():
        level = getattr(spec.drift, level_name)
        mask = np.char.startswith(stat.astype(str), prefix + "_")
        if not mask.any():
            continue
        effect = anomaly.fixed_severity(values, low=(level.medium or 0) / 2, medium=level.medium, high=level.high)
        severity = np.where(mask, np.minimum(learned, effect), severity)
    baseline = np.where(np.isnan(both.baseline), 0.0, both.baseline)
    nulls = stat == "null_rate"
    q = spec.quality.null_rate_increase
    fixed_null = anomaly.fixed_severity(values - baseline, medium=q.medium, high=q.high)
    severity = np.where(nulls, np.maximum(np.minimum(learned, 2), fixed_null), severity)
    unseen = stat == "unseen_share"
    u = spec.quality.unseen_category_share
    severity = np.where(unseen, anomaly.fixed_severity(values, medium=u.medium, high=u.high), severity)
    # Day-over-week changes and one day against the training reference are news (a storm, a holiday), not a
    # shift in what the model sees: at most medium (alerted on the day). A high drift is a complete week
    # against the training reference.
    names = stat.astype(str)
    news = np.char.endswith(names, "_trail") | np.char.endswith(names, "_ref_1d")
    # The outcomes' error distribution is compared with the holdout's (two weeks of the training window, few
    # rows a segment): at most medium. What retrains on outcomes is the online error above the spec's bound.
    news |= (ind["source"].to_numpy() == OUTCOMES) & drift
    severity = np.where(news, np.minimum(severity, 2), severity)
    small = ind["n_rows"].to_numpy(float) < spec.min_rows_high
    severity = np.where(small, np.minimum(severity, 2), severity)
    out = ind.assign(severity=severity.astype(int), baseline=both.baseline, scale=both.scale, z=both.z,
                     n_history=both.n_history)
    return out


def _message(r: Any) -> str:
    where = "overall" if r.segment == "all" else f"{r.segment}={r.segment_value}"
    base = "" if r.baseline is None or np.isnan(r.baseline) else f", baseline {r.baseline:.4g}"
    z = "" if r.z is None or np.isnan(r.z) else f", z {r.z:.1f}"
    return f"{r.source} {r.column} {r.statistic} {where}: {r.value:.4g}{base}{z} ({int(r.n_rows):,} rows)"


# ------------------------------------------------------------------------------------------------- tables

_INDICATOR_SCHEMA = [("source", "string"), ("segment", "string"), ("segment_value", "string"),
                     ("column", "string"), ("statistic", "string"), ("value", "double"), ("n_rows", "int64"),
                     ("model_version", "string")]
_FINDING_SCHEMA = [("source", "string"), ("column", "string"), ("segment", "string"), ("segment_value", "string"),
                   ("statistic", "string"), ("kind", "string"), ("severity", "string"), ("value", "double"),
                   ("baseline", "double"), ("scale", "double"), ("z", "double"), ("n_rows", "int64"),
                   ("n_history", "int64"), ("model_version", "string"), ("message", "string")]
_INCIDENT_SCHEMA = [("incident_id", "string"), ("findings", "int64"), ("severity", "string"),
                    ("reason", "string"), ("model_version", "string")]


def _arrow_schema(columns: list[tuple[str, str]]) -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "double": pa.float64(), "int64": pa.int64()}
    return pa.schema([(name, types[t]) for name, t in columns])


def _publish_frames(lake: Lake, name: str, run_id: str, frames: dict[str, pd.DataFrame],
                    columns: list[tuple[str, str]], days: list[str]) -> str:
    """Publish one pandas frame per day as the ``day`` partitions of ``name``, replacing exactly ``days``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(columns)
    lake.discard_staging(name, run_id)
    staged = lake.staging_path(name, run_id)
    staged.mkdir(parents=True, exist_ok=True)
    for day, frame in frames.items():
        if frame is None or frame.empty:
            continue
        part = staged / f"day={day}"
        part.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(frame[[c for c, _ in columns]], schema=schema, preserve_index=False)
        pq.write_table(table, part / "part-00000.parquet")
        write_partition_manifest(part, rows=len(frame), run_id=run_id)
    return lake.publish_partitions(name, run_id, column="day", replace=days, columns=["day", *[c for c, _ in columns]])


def _read_partitions(lake: Lake, name: str, days: list[str], columns: list[str] | None = None
                     ) -> dict[str, pd.DataFrame]:
    """The published ``day`` partitions of ``name`` among ``days`` (pyarrow, no Spark)."""
    import pyarrow.parquet as pq

    if lake.current_version(name) is None:
        return {}
    root = Path(lake.path(name))
    out = {}
    for day in days:
        part = root / f"day={day}"
        files = sorted(part.glob("*.parquet")) if part.is_dir() else []
        if files:
            out[day] = pq.read_table(files, columns=columns).to_pandas() if len(files) == 1 else \
                pq.ParquetDataset(part).read(columns=columns).to_pandas()
    return out


def _publish_profiles(lake: Lake, run_id: str, usecase: str, daily: DataFrame, days: list[str]) -> None:
    from pyspark.sql import functions as F  # noqa: N812

    name = profiles_table(usecase)
    lake.discard_staging(name, run_id)
    staged = lake.staging_path(name, run_id)
    frame = daily.where(F.col("day").isin(days))
    frame.repartition("day").sortWithinPartitions(*KEY_ORDER).write.mode("overwrite").partitionBy("day").parquet(
        str(staged))
    counts = {str(r[0]): int(r[1]) for r in frame.groupBy("day").count().collect()}
    staged.mkdir(parents=True, exist_ok=True)
    for day, rows in counts.items():
        write_partition_manifest(staged / f"day={day}", rows=rows, run_id=run_id)
    lake.publish_partitions(name, run_id, column="day", replace=days, columns=daily.columns)


KEY_ORDER = ["source", "segment", "segment_value", "column"]


def lookback_days(spec: MonitoringSpec, first: str) -> list[str]:
    """The days before ``first`` whose daily profiles its windows merge: the trailing window before it (the
    window compared with ``first`` itself)."""
    return [_shift(first, -i) for i in range(spec.trailing_days, 0, -1)]


def _stored_profiles(spark: SparkSession, lake: Lake, usecase: str, days: list[str]
                     ) -> tuple[DataFrame | None, list[str]]:
    """(the stored daily profiles of ``days``, the days found), read in one pass."""
    frame = lake.read_partitions(spark, profiles_table(usecase), "day", days)
    if frame is None:
        return None, []
    stored = lake.partitions(profiles_table(usecase), "day")
    return frame, [d for d in days if d in stored]


# ---------------------------------------------------------------------------------------------- the run


def _model_frames(spark: SparkSession, lake: Lake, usecase: UseCase, features: FeatureSet, spec: MonitoringSpec,
                  days: list[str]) -> tuple[DataFrame | None, DataFrame | None, list[str], list[str]]:
    """(flat served rows, their labelled outcomes, numeric request columns, categorical request columns)."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.monitoring import feedback as fb

    num, cat, feats = _served_columns(usecase, features, spec)
    served = lake.read_partitions(spark, fb.served_table(usecase.name), fb.SERVED_DATE, days)
    if served is None:
        return None, None, num, cat
    levels = [c[len("upper_"):] for c in served.columns if c.startswith("upper_")]
    request_cols = list(dict.fromkeys(num + cat + [s.column for s in spec.segments.values() if s.column not in feats]))
    flat = _flat_served(served, request_cols, feats, levels)
    feedback = lake.read_partitions(spark, fb.feedback_table(usecase.name), fb.PREDICTION_DAY, days)
    outcomes = None
    if feedback is not None:
        labelled = feedback.where((F.col("source") == "online") & (F.col("label_status") == "labelled")).select(
            F.col("prediction_id").alias("request_id"), "actual", "error", "abs_error",
            *[F.col(c).cast("double").alias(c) for c in feedback.columns if c.startswith("covered_")])
        outcomes = flat.join(labelled, "request_id", "inner")
    return flat, outcomes, num, cat


def _versions(flat: DataFrame | None) -> tuple[str | None, dict[str, str | None]]:
    """(model name, each day's serving version: the one that answered most requests)."""
    if flat is None:
        return None, {}
    counts = flat.groupBy("day", "model_name", "model_version").count().collect()
    best: dict[str, tuple[int, str, str]] = {}
    for r in counts:
        if r["model_version"] is None:
            continue
        if r["day"] not in best or r["count"] > best[r["day"]][0]:
            best[r["day"]] = (int(r["count"]), r["model_name"], str(r["model_version"]))
    names = Counter(v[1] for v in best.values())
    return (names.most_common(1)[0][0] if names else None), {d: v[2] for d, v in best.items()}


def _history_for(stored: dict[str, pd.DataFrame], spec: MonitoringSpec, version: str | None,
                 reference_history: pd.DataFrame | None, lake_only: bool) -> _History:
    """A history seeded with the reference period's series (model sources) and ``stored`` (day -> the stored
    indicators of the days before the interval): the model sources' of the same version, or the lake
    sources'."""
    history = _History(spec.anomaly.window_days)
    if not lake_only and reference_history is not None and not reference_history.empty:
        _seed(history, [reference_history])
    frames = []
    for day, frame in sorted(stored.items()):
        model = frame["source"].isin(MODEL_SOURCES)
        part = frame[~model] if lake_only else frame[model & (frame["model_version"] == (version or ""))]
        if not part.empty:
            frames.append(part.assign(day=day))
    _seed(history, frames)
    return history


def _fixed_finding(day: str, source: str, column: str, statistic: str, severity: int, value: float,
                   message: str, version: str | None, n_rows: int = 0, kind: str = "quality",
                   baseline: float = float("nan")) -> dict[str, Any]:
    return {"day": day, "source": source, "column": column, "segment": "all", "segment_value": "all",
            "statistic": statistic, "kind": kind, "severity": int(severity), "value": float(value),
            "baseline": baseline, "scale": float("nan"), "z": float("nan"), "n_rows": int(n_rows),
            "n_history": 0, "model_version": version or "", "message": message}


def _online_week(week: pd.DataFrame, spec: MonitoringSpec, day: str, version: str | None) -> list[dict[str, Any]]:
    """The trailing week's online MAE and interval coverage against the spec's bounds (overall rows)."""
    out = []
    rows = week[(week["source"] == OUTCOMES) & (week["segment"] == "all")].set_index("column")
    if f"{OUTCOME_PREFIX}abs_error" not in rows.index:
        return out
    r = rows.loc[f"{OUTCOME_PREFIX}abs_error"]
    labelled = float(r["n"] or 0)
    if labelled < spec.online.min_labelled:
        return out
    mae = float(r["sum"]) / labelled
    if spec.online.mae_max is not None and mae > spec.online.mae_max:
        out.append(_fixed_finding(day, OUTCOMES, f"{OUTCOME_PREFIX}abs_error", "mae_7d", 3, mae,
                                  f"online MAE over the trailing {spec.trailing_days} days {mae:.2f} above the "
                                  f"spec's bound {spec.online.mae_max:g} ({int(labelled):,} labelled predictions)",
                                  version, int(labelled), kind="online", baseline=float(spec.online.mae_max)))
    cov_col = f"{OUTCOME_PREFIX}covered_90"
    if spec.online.coverage_min is not None and cov_col in rows.index:
        c = rows.loc[cov_col]
        if float(c["n"] or 0) >= spec.online.min_labelled:
            cov = float(c["sum"]) / float(c["n"])
            if cov < spec.online.coverage_min:
                out.append(_fixed_finding(day, OUTCOMES, cov_col, "coverage_7d", 2, cov,
                                          f"90% interval coverage over the trailing {spec.trailing_days} days "
                                          f"{cov:.3f} below {spec.online.coverage_min:g}", version, int(c["n"]),
                                          kind="online", baseline=float(spec.online.coverage_min)))
    return out


def _day_findings(day: str, judged: pd.DataFrame, version: str | None) -> pd.DataFrame:
    hits = judged[judged["severity"] >= 1].copy()
    if hits.empty:
        return hits.assign(day=[], kind=[], model_version=[], message=[])
    hits["day"] = day
    hits["kind"] = [statistic_kind(s) for s in hits["statistic"]]
    hits["model_version"] = hits["source"].map(lambda s: (version or "") if s in MODEL_SOURCES else "")
    hits["message"] = [_message(r) for r in hits.itertuples()]
    return hits


def _top(findings: pd.DataFrame, limit: int) -> list[dict[str, Any]]:
    if findings.empty:
        return []
    ordered = findings.assign(_z=findings["z"].abs().fillna(np.inf)).sort_values(
        ["severity", "_z", "n_rows"], ascending=[False, False, False])
    out = []
    for r in ordered.head(limit).itertuples():
        out.append({"day": r.day, "severity": SEVERITY_NAMES[int(r.severity)], "source": r.source,
                    "column": r.column, "segment": r.segment, "segment_value": r.segment_value,
                    "statistic": r.statistic, "kind": r.kind, "message": r.message})
    return out


def _eligible(findings: pd.DataFrame, spec: MonitoringSpec) -> pd.DataFrame:
    """The findings that open (or extend) an incident: drift on the model's inputs / outputs, or online error."""
    level = SEVERITY_NAMES.index(spec.retrain.min_severity)
    if findings.empty:
        return findings
    return findings[(findings["severity"] >= level) & findings["kind"].isin(["drift", "online"])
                    & findings["source"].isin(MODEL_SOURCES)]


def _incidents(lake: Lake, usecase: str, days: list[str], by_day: dict[str, pd.DataFrame], spec: MonitoringSpec
               ) -> dict[str, pd.DataFrame]:
    """Each interval day's incident row (the day's eligible findings): a day within the cool-down of the
    previous eligible day continues its incident, otherwise it opens one named ``<usecase>-<day>``."""
    import pandas as pd

    cooldown = spec.cooldown.days or 1
    before = [_shift(days[0], -i) for i in range(cooldown, 0, -1)]
    previous = _read_partitions(lake, incidents_table(usecase), before)
    last: tuple[str, str] | None = None
    for day in sorted(previous):
        frame = previous[day]
        if not frame.empty:
            last = (day, str(frame["incident_id"].iloc[0]))
    out: dict[str, pd.DataFrame] = {}
    for day in days:
        eligible = _eligible(by_day.get(day, pd.DataFrame()), spec)
        if eligible.empty:
            continue
        if last is not None and (date.fromisoformat(day) - date.fromisoformat(last[0])).days <= cooldown:
            incident = last[1]
        else:
            incident = f"{usecase}-{day}"
        top = eligible.sort_values(["severity", "z"], ascending=False).iloc[0]
        out[day] = pd.DataFrame([{"incident_id": incident, "findings": len(eligible),
                                  "severity": SEVERITY_NAMES[int(eligible["severity"].max())],
                                  "reason": top["message"], "model_version": top["model_version"]}])
        last = (day, incident)
    return out


def retrain_params(spec: MonitoringSpec, first_day: str) -> dict[str, Any]:
    """The training window an incident asks for: ``retrain.window`` ending with the incident's first day."""
    end = _shift(first_day, 1)
    return {"start": _shift(end, -spec.retrain_window.days), "end": end,
            "validation_days": spec.retrain.validation_days, "holdout_days": spec.retrain.holdout_days}


def _report(spark: SparkSession, settings: Settings, usecase: UseCase, spec: MonitoringSpec, flat: DataFrame,
            day: str, findings: pd.DataFrame, reference_folder: Path | None, model: str | None,
            version: str | None, log_to_mlflow: bool) -> str | None:
    """The Evidently report of ``day``'s most drifted served columns against the reference features."""
    import pandas as pd

    from pipelines.monitoring.evidently_report import drift_report

    if reference_folder is None:
        return None
    drifted = findings[(findings["source"] == SERVED) & (findings["segment"] == "all")
                       & findings["statistic"].str.contains("_ref_")]
    ranked = list(dict.fromkeys(drifted.sort_values(["severity", "value"], ascending=False)["column"]))
    reference = pd.read_parquet(reference_folder / "features.parquet")
    plain = {c: c[len(REQUEST_PREFIX):] if c.startswith(REQUEST_PREFIX) else c for c in flat.columns}
    columns = [c for c in ranked if plain[c] in reference.columns][:spec.report.top_features] if ranked else []
    if not columns:  # nothing drifted: the report shows the features themselves
        columns = [c for c in flat.columns if plain[c] in reference.columns and c != "day"][:spec.report.top_features]
    rows = flat.where(flat.day == day).select(*[f"`{c}`" for c in columns]).limit(spec.report.max_rows * 4)
    current = rows.toPandas().rename(columns=plain)
    names = [plain[c] for c in columns]
    cats = [n for n in names if n in spec.categorical]
    path = settings.home_path / "reports" / usecase.name / "drift" / day / "drift.html"
    result = drift_report(reference[names], current[names], numeric=[n for n in names if n not in cats],
                          categorical=cats, path=path, title=f"{usecase.name} drift {day} (model {model} v{version})",
                          max_rows=spec.report.max_rows)
    link = str(result.path)
    if log_to_mlflow and model and version:
        from pipelines.models.registry import client, mlflow_errors, resolve_version

        try:
            with mlflow_errors(settings):
                ref = resolve_version(settings, model, version=version)
                client(settings).log_artifact(ref.run_id, str(result.path), f"atelier/monitoring/drift/{day}")
            link = (f"{settings.mlflow.tracking_uri.rstrip('/')}/#/experiments/{ref.experiment_id}/runs/"
                    f"{ref.run_id}/artifacts/atelier/monitoring/drift/{day}/drift.html"
                    if getattr(ref, "experiment_id", None) else link)
        except Exception as exc:  # the findings are stored already: a registry outage loses only the link
            log.warning("drift report %s not logged to MLflow: %s", day, exc)
    return link


def run_drift(spark: SparkSession, settings: Settings, usecase: UseCase, start: date, end: date, run_id: str, *,
              report: bool = True, log_to_mlflow: bool | None = None) -> DriftResult:
    """Profile, measure and judge the days [start, end) (see the module doc); replaces exactly those days."""
    import pandas as pd
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.featurestore.spec import load_feature_set
    from pipelines.monitoring.reference import reference_dir

    if start >= end:
        raise ValueError(f"empty interval: {start} is not before {end}")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    features = load_feature_set(usecase)
    spec = load_monitoring_spec(usecase, features)
    lake = Lake.from_settings(settings)
    days = _days(start, end)
    lookback = lookback_days(spec, days[0])
    stored, stored_days = _stored_profiles(spark, lake, usecase.name, lookback)
    compute = [d for d in lookback if d not in stored_days] + days

    flat, outcomes, num, cat = _model_frames(spark, lake, usecase, features, spec, compute)
    model, versions = _versions(flat)
    sources = _lake_sources(spark, lake, usecase, spec, compute)
    if flat is not None:
        sources = _model_sources(flat, outcomes, spec, num, cat, list(features.feature_names)) + sources
    daily = _profile(sources, spec)
    if stored is not None:
        daily = stored.select(*daily.columns).unionByName(daily) if daily is not None else stored
    if daily is None:
        raise TableNotFound(f"nothing to profile for '{usecase.name}': no served data and no lake source "
                            f"({', '.join(spec.sources) or 'none declared'}) is published")
    daily = daily.withColumn("day", F.col("day").cast("string")).cache()
    overall = (daily.where((F.col("segment") == "all") & F.col("day").isin(compute))
               .groupBy("source", "day").agg(F.max("rows").alias("rows")).collect())
    rows_scanned: dict[str, int] = {}
    for r in overall:
        rows_scanned[r["source"]] = rows_scanned.get(r["source"], 0) + int(r["rows"] or 0)
    log.info("drift %s: daily profiles of %d days in %.1f s", usecase.name, len(compute), time.perf_counter() - t0)
    folder = run_dir(settings, usecase.name) / "work" / safe_run(run_id)
    windows = _windows(daily, days, spec, folder)
    log.info("drift %s: windows in %.1f s", usecase.name, time.perf_counter() - t0)
    _publish_profiles(lake, run_id, usecase.name, daily, days)
    daily.unpersist()
    seconds["profiles"] = round(time.perf_counter() - t0, 2)

    # The references of the versions that served, and each history.
    t1 = time.perf_counter()
    refs: dict[str, tuple[pd.DataFrame, pd.DataFrame] | None] = {}
    for version in sorted({v for v in versions.values() if v}):
        refs[version] = _reference_profiles(spark, settings, usecase, features, spec, model or "", version, num, cat)
    seconds["reference"] = round(time.perf_counter() - t1, 2)
    log.info("drift %s: profiles %.1f s, references %.1f s", usecase.name, seconds["profiles"], seconds["reference"])
    t1 = time.perf_counter()
    window_before = [_shift(days[0], -i) for i in range(spec.anomaly.window_days, 0, -1)]
    stored_indicators = _read_partitions(lake, indicators_table(usecase.name), window_before)
    lake_history = _history_for(stored_indicators, spec, None, None, lake_only=True)
    model_history: dict[str, _History] = {}

    indicators: dict[str, pd.DataFrame] = {}
    findings: dict[str, pd.DataFrame] = {}
    counts: dict[str, int] = {}
    for day in days:
        version = versions.get(day)
        d, w, p = (_read_day(windows[k], day) for k in WINDOWS)
        ref = refs.get(version or "")
        weekday = date.fromisoformat(day).weekday()
        parts = []
        for src in sorted(set(d["source"])):
            reference = ref[0][ref[0]["source"] == src] if ref is not None and src in MODEL_SOURCES else None
            parts.append(compute_indicators(d[d["source"] == src], w[w["source"] == src], p[p["source"] == src],
                                            reference, min_rows=spec.min_rows,
                                            window_days=spec.trailing_days))
        ind = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=[*INDEX, "statistic", "value", "n_rows"])
        judged_parts = []
        model_part = ind[ind["source"].isin(MODEL_SOURCES)]
        lake_part = ind[~ind["source"].isin(MODEL_SOURCES)]
        if not model_part.empty:
            key = version or ""
            if key not in model_history:
                model_history[key] = _history_for(stored_indicators, spec, version,
                                                  ref[1] if ref is not None else None, lake_only=False)
            judged_parts.append(_judge(model_part, model_history[key], weekday, spec))
            model_history[key].add(_keys(model_part), model_part["value"].to_numpy(float), weekday)
        if not lake_part.empty:
            judged_parts.append(_judge(lake_part, lake_history, weekday, spec))
            lake_history.add(_keys(lake_part), lake_part["value"].to_numpy(float), weekday)
        judged = pd.concat(judged_parts, ignore_index=True) if judged_parts else ind.assign(
            severity=[], baseline=[], scale=[], z=[], n_history=[])
        day_findings = _day_findings(day, judged, version)
        extra = []
        served_rows = d[(d["source"] == SERVED) & (d["segment"] == "all")]["rows"]
        n_served = int(served_rows.max()) if len(served_rows) else 0
        if n_served == 0:
            extra.append(_fixed_finding(day, SERVED, "*", "rows", 2, 0.0, f"no served predictions on {day}: the "
                                        "prediction log is empty or was not ingested (monitoring_feedback)",
                                        version))
        else:
            out_rows = d[(d["source"] == OUTCOMES) & (d["segment"] == "all")]["rows"]
            n_out = int(out_rows.max()) if len(out_rows) else 0
            share = n_out / n_served
            if n_served >= spec.online.min_labelled and share < 0.5:
                extra.append(_fixed_finding(day, OUTCOMES, "*", "labelled_share", 2 if n_out == 0 else 1, share,
                                            f"missing outcomes: {n_out:,} of {n_served:,} served predictions on "
                                            f"{day} have an outcome ({share:.0%})", version, n_served))
            extra += _online_week(w, spec, day, version)
        for src, table in ((f"lake.{t}", t) for t in spec.sources):
            if not (d["source"] == src).any() and lake.current_version(table) is not None:
                extra.append(_fixed_finding(day, src, "*", "rows", 2, 0.0, f"lake table {table} has no rows for "
                                            f"{day}", None))
        if extra:
            day_findings = pd.concat([day_findings, pd.DataFrame(extra)], ignore_index=True)
        findings[day] = day_findings
        ind = ind.assign(model_version=np.where(ind["source"].isin(MODEL_SOURCES), version or "", ""))
        indicators[day] = ind
        counts[day] = len(ind)
    seconds["indicators"] = round(time.perf_counter() - t1, 2)
    shutil.rmtree(folder, ignore_errors=True)

    # Publish: indicators, findings (severity by name), incidents.
    t2 = time.perf_counter()
    _publish_frames(lake, indicators_table(usecase.name), run_id, indicators, _INDICATOR_SCHEMA, days)
    named = {d: f.assign(severity=f["severity"].map(lambda s: SEVERITY_NAMES[int(s)])) for d, f in findings.items()}
    _publish_frames(lake, findings_table(usecase.name), run_id, named, _FINDING_SCHEMA, days)
    incident_days = _incidents(lake, usecase.name, days, findings, spec)
    _publish_frames(lake, incidents_table(usecase.name), run_id, incident_days, _INCIDENT_SCHEMA, days)
    incidents: dict[str, dict[str, Any]] = {}
    for day, frame in sorted(incident_days.items()):
        r = frame.iloc[0]
        inc = incidents.setdefault(r["incident_id"], {"incident_id": r["incident_id"], "first_day": day,
                                                      "last_day": day, "findings": 0, "reason": r["reason"],
                                                      "model_version": r["model_version"]})
        inc["last_day"] = day
        inc["findings"] += int(r["findings"])
    retrain = [{"incident_id": i, "reason": inc["reason"], "first_day": inc["first_day"],
                "params": retrain_params(spec, inc["first_day"])}
               for i, inc in incidents.items() if i == f"{usecase.name}-{inc['first_day']}"]
    seconds["publish"] = round(time.perf_counter() - t2, 2)

    reports: dict[str, str] = {}
    if report and flat is not None:
        t3 = time.perf_counter()
        mlflow = settings.feedback.mlflow_logging if log_to_mlflow is None else log_to_mlflow
        for day in sorted({days[-1], *(r["first_day"] for r in retrain)}):
            version = versions.get(day)
            if not version:
                continue
            folder_ref = reference_dir(settings, usecase.name, model or "", version)
            link = _report(spark, settings, usecase, spec, flat, day, findings[day],
                           folder_ref if (folder_ref / "features.parquet").exists() else None, model, version,
                           mlflow)
            if link:
                reports[day] = link
        seconds["report"] = round(time.perf_counter() - t3, 2)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    all_findings = pd.concat(list(findings.values()), ignore_index=True) if findings else pd.DataFrame()
    summary = {d: {SEVERITY_NAMES[int(s)]: int(n) for s, n in f["severity"].value_counts().items()}
               for d, f in findings.items()}
    present = sorted({v for v in versions.values() if v})
    result = DriftResult(usecase.name, run_id, days, model, {d: versions.get(d) for d in days},
                         ", ".join(f"v{v}" for v in present if refs.get(v) is not None) or None, rows_scanned,
                         counts, summary, _top(all_findings, spec.alerts.max_listed), list(incidents.values()),
                         retrain, reports, seconds)
    out = run_dir(settings, usecase.name) / "runs" / f"{safe_run(run_id)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    log.info("drift %s: %s indicators, %s", usecase.name, f"{result.indicators_total:,}", seconds)
    return result


def safe_run(run_id: str) -> str:
    from pipelines.lake.tables import safe_name

    return safe_name(run_id)
