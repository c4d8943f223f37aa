"""Training-serving skew check: online values vs. the offline (Spark) computation of the same rows.

For a sample of entities, read each one's online row (with its feature event time), recompute the view's
features offline with the Spark compiler from the lake, take the offline row at that same event time, and
compare feature by feature (exact for ints, strings and bools; 1e-9 relative for doubles; null only equals
null). The report gives the mismatch rate per feature and fails the check above the spec's threshold. It is
kept as a lake dataset (one partition per run) and as a readable text file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.featurestore.materialize import online_view_name
from pipelines.featurestore.offline import EVENT_TIME, compute_view
from pipelines.featurestore.spec import FeatureSet, FeatureView
from pipelines.lake.tables import Lake, safe_name

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REL_TOLERANCE = 1e-9


class SkewDetected(RuntimeError):
    def __init__(self, report: SkewReport) -> None:
        super().__init__(report.to_text())
        self.report = report


@dataclass
class FeatureSkew:
    view: str
    feature: str
    compared: int
    mismatches: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0


@dataclass
class SkewReport:
    usecase: str
    run_id: str
    checked_at: str
    threshold: float
    sampled: int
    found_online: int
    missing_offline: int
    features: list[FeatureSkew]

    @property
    def success(self) -> bool:
        return all(f.rate <= self.threshold for f in self.features) and self.missing_offline == 0

    def to_text(self) -> str:
        lines = [f"skew check {'PASSED' if self.success else 'FAILED'} for {self.usecase} run {self.run_id}: "
                 f"{self.sampled} entities sampled, {self.found_online} found online, "
                 f"{self.missing_offline} without an offline row at the online event time; "
                 f"threshold {self.threshold:.2%} per feature"]
        for f in self.features:
            flag = "FAIL" if f.rate > self.threshold else "ok  "
            lines.append(f"  {flag} {f.view}.{f.feature}: {f.mismatches}/{f.compared} mismatched ({f.rate:.2%})"
                         + (f"; e.g. {f.examples[:2]}" if f.examples else ""))
        return "\n".join(lines)


def values_match(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= REL_TOLERANCE * max(abs(a), abs(b), 1e-300)
    return a == b


def _sample_keys(spark: SparkSession, lake: Lake, view: FeatureView, size: int, as_of: datetime) -> list[tuple]:
    from pyspark.sql import functions as F  # noqa: N812

    src = spark.read.parquet(lake.path(view.source)).where(F.col(view.event_time) <= F.lit(as_of))
    for key in view.keys:
        src = src.where(F.col(key).isNotNull())
    keys = src.select(*view.keys).distinct()
    # A deterministic sample: the same interval checks the same entities on a re-run.
    ordered = keys.orderBy(F.xxhash64(*view.keys, F.lit("atelier-skew")), *view.keys).limit(size)
    return [tuple(r) for r in ordered.collect()]


def check_view(spark: SparkSession, settings: Settings, features: FeatureSet, view: FeatureView, as_of: datetime,
               size: int) -> tuple[int, int, int, list[FeatureSkew]]:
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.stores.online import get_online_store

    lake = Lake.from_settings(settings)
    keys = _sample_keys(spark, lake, view, size, as_of)
    with get_online_store(settings) as store:
        online = [r for r in store.read(online_view_name(features.usecase, view.name), keys, now=as_of) if r.found]
    skews = [FeatureSkew(view.name, f.name, 0, 0) for f in view.features]
    if not online:
        return len(keys), 0, 0, skews
    src = spark.read.parquet(lake.path(view.source))
    wanted = spark.createDataFrame([(*r.key, r.event_time) for r in online], [*view.keys, EVENT_TIME])
    src = src.join(F.broadcast(wanted.select(*view.keys).distinct()), list(view.keys), "inner")
    # Only the instants the online values were computed at, reading just the history their windows need.
    first = min(r.event_time for r in online)
    last = max(r.event_time for r in online) + timedelta(microseconds=1)
    offline_rows = compute_view(spark, lake, view, first, last, source=src).join(
        F.broadcast(wanted), [*view.keys, EVENT_TIME], "inner").collect()
    offline = {(tuple(r[k] for k in view.keys), r[EVENT_TIME].replace(tzinfo=UTC)): r for r in offline_rows}
    missing = 0
    for result in online:
        row = offline.get((tuple(result.key), result.event_time.astimezone(UTC)))
        if row is None:
            missing += 1
            continue
        for skew in skews:
            skew.compared += 1
            online_value, offline_value = result.values[skew.feature], row[skew.feature]
            if not values_match(online_value, offline_value):
                skew.mismatches += 1
                if len(skew.examples) < 5:
                    skew.examples.append({"key": list(result.key), "online": online_value, "offline": offline_value})
    return len(keys), len(online), missing, skews


def run_skew_check(spark: SparkSession, settings: Settings, features: FeatureSet, run_id: str,
                   as_of: datetime) -> SkewReport:
    """Check every batch view; save the report (lake dataset + text file). Raises SkewDetected on failure."""
    sampled = found = missing = 0
    all_skews: list[FeatureSkew] = []
    for view in features.batch_views:
        s, f, m, skews = check_view(spark, settings, features, view, as_of, features.skew_check.sample_size)
        sampled, found, missing = sampled + s, found + f, missing + m
        all_skews.extend(skews)
    report = SkewReport(features.usecase, run_id, datetime.now(UTC).isoformat(timespec="seconds"),
                        features.skew_check.max_mismatch_rate, sampled, found, missing, all_skews)
    save_report(settings, report)
    if not report.success:
        raise SkewDetected(report)
    return report


def save_report(settings: Settings, report: SkewReport) -> Path:
    import pandas as pd

    run = safe_name(report.run_id)
    dataset = Path(settings.lake_root) / "_reports" / "skew" / f"usecase={report.usecase}" / f"run_id={run}"
    dataset.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{"checked_at": report.checked_at, "view": f.view, "feature": f.feature,
                           "compared": f.compared, "mismatches": f.mismatches, "rate": f.rate,
                           "threshold": report.threshold} for f in report.features])
    tmp = dataset / ".part.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(dataset / "part.parquet")
    folder = settings.home_path / "reports" / report.usecase / "skew"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run}.txt").write_text(report.to_text() + "\n")
    (folder / f"{run}.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    return folder / f"{run}.txt"
