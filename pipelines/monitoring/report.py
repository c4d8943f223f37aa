"""Reading what the feedback loop measured, without Spark (pyarrow over the published lake tables)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.lake.tables import Lake, TableNotFound
from pipelines.monitoring.feedback import PREDICTION_DAY, metrics_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["metrics_frame", "metrics_text"]


def metrics_frame(settings: Settings, usecase: str, *, start: str | None = None, end: str | None = None,
                  source: str | None = "online") -> pd.DataFrame:
    """The published online metrics of a use case, days [start, end] (inclusive, ISO dates), one source."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    lake = Lake.from_settings(settings)
    try:
        path = lake.path(metrics_table(usecase))
    except TableNotFound:
        raise TableNotFound(f"no online metrics for use case '{usecase}' yet: replay or serve traffic, then run "
                            "the monitoring_feedback DAG") from None
    data = ds.dataset(path, format="parquet", partitioning="hive")
    condition = None
    for expr in ([pc.field(PREDICTION_DAY) >= start] if start else []) + (
            [pc.field(PREDICTION_DAY) <= end] if end else []) + ([pc.field("source") == source] if source else []):
        condition = expr if condition is None else condition & expr
    frame = data.to_table(filter=condition).to_pandas()
    frame[PREDICTION_DAY] = frame[PREDICTION_DAY].astype(str)
    return frame.sort_values([PREDICTION_DAY, "model_version", "segment", "segment_value"]).reset_index(drop=True)


def _fmt(value: Any, digits: int = 2, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 100:.1f}%" if pct else f"{value:.{digits}f}"


def metrics_text(frame: pd.DataFrame, *, segment: str = "all", version: str | None = None) -> str:
    rows = frame[frame.segment == segment]
    if version is not None:
        rows = rows[rows.model_version.astype(str) == str(version)]
    if rows.empty:
        known = sorted(set(frame.segment)) if not frame.empty else []
        return f"no online metrics for segment '{segment}'" + (f" (segments: {', '.join(known)})" if known else "")
    coverage = sorted(c for c in rows.columns if c.startswith("coverage_"))
    widths = sorted(c for c in rows.columns if c.startswith("width_"))
    head = (f"{'day':<10} {'version':>7} {segment if segment != 'all' else '':<10} {'predictions':>11} {'labelled':>8} "
            f"{'MAE':>6} {'RMSE':>6} {'bias':>6} " + " ".join(f"{c.replace('coverage_', 'cov'):>6}" for c in coverage)
            + " " + " ".join(f"{c.replace('width_', 'w'):>5}" for c in widths)
            + f" {'fallback':>8} {'stale':>6} {'lag p50':>8}")
    lines = [head]
    for r in rows.itertuples(index=False):
        value = "" if segment == "all" else str(r.segment_value)[:10]
        lines.append(
            f"{getattr(r, PREDICTION_DAY):<10} {r.model_version!s:>7} {value:<10} {r.predictions:>11,} {r.labelled:>8,} "
            f"{_fmt(r.mae):>6} {_fmt(r.rmse):>6} {_fmt(r.bias):>6} "
            + " ".join(f"{_fmt(getattr(r, c), pct=True):>6}" for c in coverage) + " "
            + " ".join(f"{_fmt(getattr(r, c), 1):>5}" for c in widths)
            + f" {_fmt(r.fallback_rate, pct=True):>8} {_fmt(r.stale_rate, pct=True):>6} "
            f"{_fmt(r.label_lag_p50_s / 3600 if r.label_lag_p50_s == r.label_lag_p50_s else None, 1):>6} h")
    return "\n".join(lines)
