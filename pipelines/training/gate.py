"""The promotion gate after training (model_train's gate task): the use case's promotion rules applied to
the version the run registered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.featurestore.spec import load_feature_set
from pipelines.training.preflight import promotion_rules
from pipelines.training.spec import load_model_spec
from pipelines.usecases import UseCase

if TYPE_CHECKING:
    from pipelines.config import Settings

__all__ = ["run_gate"]


def run_gate(settings: Settings, usecase: UseCase, run_id: str, overrides: dict[str, Any] | None = None,
             by: str = "model_train") -> dict[str, Any]:
    """Apply the use case's promotion rules to the version this run registered."""
    from pipelines.lifecycle.registry import apply_rules
    from pipelines.models.registry import ModelNotFound, client
    from pipelines.training.pipeline import RUN_ID_TAG, experiment_name, find_registered

    features = load_feature_set(usecase)
    spec = load_model_spec(usecase, overrides, features.feature_names, features.key_columns)
    rules = promotion_rules(usecase, spec)
    c = client(settings)
    mv = find_registered(c, spec.name, run_id)
    if mv is None:
        raise ModelNotFound(f"run '{run_id}' registered no version of '{spec.name}' (tag {RUN_ID_TAG})")
    outcome = apply_rules(settings, spec.name, mv.version, rules, by=by, mlflow_client=c)
    experiment = c.get_experiment_by_name(experiment_name(usecase.name))
    base = settings.mlflow.tracking_uri.rstrip("/")
    run_url = f"{base}/#/experiments/{experiment.experiment_id if experiment else 0}/runs/{mv.run_id}"
    report_url = f"{run_url}/artifacts/atelier/report/report.html"
    return {"usecase": usecase.name, "model": spec.name, "version": outcome.version, "from": outcome.start_stage,
            "to": outcome.final_stage, "mlflow_run_url": run_url, "production": outcome.promoted_to_production, "summary": outcome.summary(), "report_url": report_url,
            "moves": outcome.moves}
