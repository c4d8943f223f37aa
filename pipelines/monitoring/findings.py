"""Reading the drift monitor's findings and incidents (``atelier monitor findings | incidents``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config import Settings
from pipelines.lake.tables import Lake, TableNotFound
from pipelines.monitoring.drift_spec import SEVERITY_NAMES

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["findings_frame", "findings_text", "incidents_frame", "incidents_text"]


def _read(settings: Settings, name: str, start: str | None, end: str | None) -> pd.DataFrame:
    import pandas as pd
    import pyarrow.dataset as ds

    lake = Lake.from_settings(settings)
    if lake.current_version(name) is None:
        raise TableNotFound(f"lake table '{name}' is not published yet: run the monitoring_drift DAG first")
    data = ds.dataset(lake.path(name), format="parquet", partitioning=ds.partitioning(flavor="hive"))
    frame = data.to_table().to_pandas()
    if "day" not in frame:  # published with no partition yet (no finding, no incident)
        return frame.assign(day=pd.Series(dtype=str))
    frame["day"] = frame["day"].astype(str)
    if start:
        frame = frame[frame["day"] >= start]
    if end:
        frame = frame[frame["day"] <= end]
    return frame


def findings_frame(settings: Settings, usecase: str, *, start: str | None = None, end: str | None = None,
                   column: str | None = None, segment: str | None = None, severity: str = "low",
                   source: str | None = None, kind: str | None = None) -> pd.DataFrame:
    """The findings of ``usecase`` filtered: days [start, end] (inclusive), a column (exact, or its name
    after the source prefix: ``dep_delay`` matches ``request.dep_delay``), a segment (``carrier`` or
    ``carrier=B6``), the minimum severity, a source and a kind (drift / quality / online)."""
    from pipelines.monitoring.drift import findings_table

    if severity not in SEVERITY_NAMES[1:]:
        raise ValueError(f"severity: one of {', '.join(SEVERITY_NAMES[1:])}, got '{severity}'")
    frame = _read(settings, findings_table(usecase), start, end)
    if frame.empty:
        return frame
    level = SEVERITY_NAMES.index(severity)
    frame = frame[frame["severity"].map(SEVERITY_NAMES.index) >= level]
    if column:
        frame = frame[(frame["column"] == column) | frame["column"].str.endswith("." + column)]
    if segment:
        name, _, value = segment.partition("=")
        frame = frame[frame["segment"] == name]
        if value:
            frame = frame[frame["segment_value"] == value]
    if source:
        frame = frame[frame["source"] == source]
    if kind:
        frame = frame[frame["kind"] == kind]
    rank = frame["severity"].map(SEVERITY_NAMES.index)
    return frame.assign(_rank=rank).sort_values(["day", "_rank", "z"], ascending=[True, False, False]).drop(
        columns="_rank").reset_index(drop=True)


def findings_text(frame: pd.DataFrame, limit: int = 50) -> str:
    if frame.empty:
        return "no findings match"
    counts = frame["severity"].value_counts()
    lines = [f"{len(frame):,} finding(s): " + ", ".join(f"{s} {int(counts.get(s, 0)):,}" for s in
                                                         ("high", "medium", "low") if counts.get(s, 0)),
             f"{'day':<10}  {'severity':<8} {'kind':<7} message"]
    for r in frame.head(limit).itertuples():
        lines.append(f"{r.day:<10}  {r.severity:<8} {r.kind:<7} {r.message}")
    if len(frame) > limit:
        lines.append(f"... {len(frame) - limit:,} more (narrow with --column / --segment / --severity / --from)")
    return "\n".join(lines)


def incidents_frame(settings: Settings, usecase: str) -> pd.DataFrame:
    """One row per incident: its first and last day, the days and findings it gathered, its first reason."""
    import pandas as pd

    from pipelines.monitoring.drift import incidents_table

    days = _read(settings, incidents_table(usecase), None, None).sort_values("day")
    if days.empty:
        return pd.DataFrame(columns=["incident_id", "first_day", "last_day", "days", "findings", "severity",
                                     "reason"])
    grouped = days.groupby("incident_id", sort=False)
    return pd.DataFrame({"first_day": grouped["day"].min(), "last_day": grouped["day"].max(),
                         "days": grouped["day"].count(), "findings": grouped["findings"].sum(),
                         "severity": grouped["severity"].first(), "reason": grouped["reason"].first()}
                        ).reset_index()


def incidents_text(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "no incidents"
    return "\n".join(f"{r.incident_id}: {r.first_day}..{r.last_day} ({r.days} day(s), {int(r.findings):,} "
                     f"finding(s), {r.severity}): {r.reason}" for r in frame.itertuples())
