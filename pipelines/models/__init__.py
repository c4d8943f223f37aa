"""Trained models as Atelier ships them: the bundle (booster + calibration + fallback) and the MLflow registry."""

from pipelines.models.bundle import BundleError, Calibration, LinearFallback, ModelBundle, feature_spec_hash
from pipelines.models.registry import (
           ModelNotFound,
           RegistryUnavailable,
           VersionRef,
           load_bundle,
           resolve_version,
)

__all__ = ["BundleError", "Calibration", "LinearFallback", "ModelBundle", "ModelNotFound", "RegistryUnavailable",
           "VersionRef", "feature_spec_hash", "load_bundle", "resolve_version"]
