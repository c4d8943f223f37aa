"""Every DAG loads and follows Atelier's conventions; nothing heavy runs at parse time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import REPO_ROOT
from tests.support.dag_parse import parse_dag_file

DAGS_DIR = REPO_ROOT / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag(settings):
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.services.airflow import airflow_env

    env = airflow_env(settings)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield DagBag(dag_folder=str(DAGS_DIR))


def test_there_are_dags():
    assert DAG_FILES, "no DAG files found"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_conventions(dagbag, path: Path):
    dags = [d for d in dagbag.dags.values() if Path(d.fileloc).resolve() == path.resolve()]
    assert len(dags) == 1, f"{path.name} must define exactly one DAG"
    dag = dags[0]
    assert dag.dag_id == path.stem, "dag_id must be the file name"
    assert dag.catchup is False
    assert dag.tags and "atelier" in dag.tags
    assert dag.doc_md and dag.doc_md.strip().startswith(f"### {dag.dag_id}"), "the module docstring is doc_md"
    assert dag.default_args.get("retries", 0) >= 1, "default_args must give retries"
    assert dag.timetable is not None  # an explicit schedule (None = on demand) was given


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_parse_imports_nothing_heavy(settings, path: Path):
    """Import the DAG file in a fresh interpreter (after Airflow's own SDK): no heavy library may load at parse
    time (the DAG processor re-parses every file every few seconds). How long a parse takes is measured by
    ``benchmarks/dag_parse.py``, not asserted here."""
    from pipelines.services.airflow import airflow_env

    result = parse_dag_file(path, {**os.environ, **airflow_env(settings)})
    assert result["heavy"] == [], f"{path.name} imports heavy modules at parse time: {result['heavy']}"


def test_tasks_emit_per_use_case_assets_only_through_an_alias(dagbag, settings):
    """Every declared Asset outlet is emitted on each success: a use case's Assets are added through the task's
    alias (``plugins.assets.emit``) by the run that is for that use case, never declared outright."""
    from airflow.sdk import Asset, AssetAlias

    from pipelines.usecases import list_usecases

    names = list_usecases(settings.usecases_path)
    aliased = []
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            for outlet in task.outlets:
                if isinstance(outlet, AssetAlias):
                    aliased.append(f"{dag.dag_id}.{task.task_id}")
                    assert outlet.name == f"{dag.dag_id}.{task.task_id}"
                elif isinstance(outlet, Asset):
                    parts = outlet.name.split(".")
                    assert not set(parts) & set(names), f"{dag.dag_id}.{task.task_id} declares {outlet.name}"
    assert {"lake_ingest.publish", "features_offline.build", "features_materialize.materialize",
            "batch_predict.score", "monitoring_feedback.feedback", "monitoring_drift.retrain"} <= set(aliased)
