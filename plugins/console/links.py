"""Extra links on task instances, back to what the task produced (stored by the task runner when the task
ends, so they need nothing at page-view time).

``model_train``'s gate shows "Training report" (the console's page of the version it judged) and "MLflow run";
``model_deploy``'s rollout shows "Rollout" (the console's rollouts page of its use case).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

PREFIX = "/atelier"


def _returned(ti_key: Any) -> dict[str, Any]:
    from airflow.sdk.execution_time.xcom import XCom

    value = XCom.get_value(ti_key=ti_key, key="return_value")
    return value if isinstance(value, dict) else {}


def _console(path: str) -> str:
    from airflow.configuration import conf

    return f"{conf.get('api', 'base_url').rstrip('/')}{PREFIX}{path}"


class TrainingReportLink(BaseOperatorLink):
    name = "Training report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        out = _returned(ti_key)
        if not out.get("usecase") or not out.get("version"):
            return ""
        return _console(f"/usecases/{quote(out['usecase'])}/models/{quote(str(out['version']))}/report")


class MlflowRunLink(BaseOperatorLink):
    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return str(_returned(ti_key).get("mlflow_run_url") or "")


class RolloutLink(BaseOperatorLink):
    name = "Rollout"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        out = _returned(ti_key)
        return _console(f"/usecases/{quote(out['usecase'])}/rollouts") if out.get("usecase") else ""
