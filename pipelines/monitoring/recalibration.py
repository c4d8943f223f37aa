"""Versioned recalibrations of a model version's intervals: produced by the feedback job, followed by the API.

Per (use case, model, version), under ``<home>/calibration/<usecase>/<model>/<version>/``:

    updates/<as_of>.json   one record per daily update (:func:`pipelines.monitoring.calibration.calibration_record`:
                           id, method, as_of, the calibration, the adaptive state), written atomically
    current.json           the newest update's record (atomic replace): what every API replica serves

An update at time T starts from the state of the latest update before T (none: the bundle's calibration),
so a re-run of the same days writes the same records and ids. The labelled rows are the feedback table's
online answers of that version whose outcome arrived before T.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.lake.tables import Lake, safe_name
from pipelines.models.bundle import Calibration

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.monitoring.calibration import AdaptiveConformalConfig
    from pipelines.usecases import UseCase

__all__ = ["bundle_calibration_id", "calibration_dir", "load_current", "recalibrate_days"]

log = logging.getLogger("atelier.recalibration")
CURRENT = "current.json"


def bundle_calibration_id(model: str, version: str) -> str:
    """The id of a version's own (training-time) calibration."""
    return f"{model}:{version}/bundle"


def calibration_dir(settings: Settings, usecase: str, model: str, version: str) -> Path:
    return settings.home_path / "calibration" / safe_name(usecase) / safe_name(model) / safe_name(str(version))


def load_current(folder: Path) -> tuple[str, Calibration] | None:
    """(id, calibration) of ``folder/current.json``, or None when there is none."""
    try:
        record = json.loads((folder / CURRENT).read_text())
    except FileNotFoundError:
        return None
    return record["id"], Calibration.from_dict(record["calibration"])


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def recalibrate_days(spark: SparkSession, settings: Settings, usecase: UseCase, days: list[date],
                     config: AdaptiveConformalConfig) -> list[dict[str, Any]]:
    """One update at the end of each day, for every model version with labelled online answers; the newest
    becomes the version's ``current.json``. Returns the records written."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.models.registry import load_bundle
    from pipelines.monitoring.calibration import calibration_record, recalibrate
    from pipelines.monitoring.feedback import feedback_table

    lake = Lake.from_settings(settings)
    if not days or lake.current_version(feedback_table(usecase.name)) is None:
        return []
    last = datetime(days[-1].year, days[-1].month, days[-1].day, tzinfo=UTC) + timedelta(days=1)
    first = datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC) + timedelta(days=1)
    earliest = first - timedelta(days=config.lookback_days + 1)
    rows = (spark.read.parquet(lake.path(feedback_table(usecase.name)))
            .where((F.col("source") == "online") & (F.col("label_status") == "labelled")
                   & (F.col("arrived_at") >= F.lit(earliest)) & (F.col("arrived_at") < F.lit(last)))
            .select("model_name", "model_version", "arrived_at", F.col("cal_segment").alias("segment"),
                    (F.col("actual") - F.col("prediction")).alias("residual"))
            .toPandas())
    if rows.empty:
        return []
    rows["arrived_at"] = rows["arrived_at"].dt.tz_localize("UTC") if rows["arrived_at"].dt.tz is None else \
        rows["arrived_at"]
    written = []
    for (model, version), labelled in rows.groupby(["model_name", "model_version"], sort=True):
        base = load_bundle(settings, model, version=version).calibration
        folder = calibration_dir(settings, usecase.name, model, str(version))
        newest = None
        for day in days:
            as_of = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            state = _state_before(folder, as_of)
            calibration, new_state = recalibrate(labelled, base, state, as_of=as_of, config=config)
            record = calibration_record(model, str(version), calibration, new_state)
            _write(folder / "updates" / f"{_stamp(as_of)}.json", record)
            written.append(record)
            newest = record
        current = _read(folder / CURRENT)
        if newest is not None and (current is None or current["as_of"] <= newest["as_of"]):
            _write(folder / CURRENT, newest)
        log.info("recalibrated %s v%s: %s", model, version, newest["id"] if newest else "-")
    return written


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _state_before(folder: Path, as_of: datetime) -> dict[str, Any] | None:
    """The state of the latest update strictly before ``as_of`` (None: start from the bundle)."""
    stamp = _stamp(as_of)
    earlier = sorted(p for p in (folder / "updates").glob("*.json") if p.stem < stamp) if (
        folder / "updates").is_dir() else []
    return json.loads(earlier[-1].read_text())["state"] if earlier else None
