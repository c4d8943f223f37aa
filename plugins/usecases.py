"""What the DAG files need to know about the use cases at parse time: names, tables, feature views.

Reads only the spec files (YAML, pydantic and the feature-language checker: milliseconds, no Spark)."""

from __future__ import annotations

from functools import lru_cache

from pipelines.config import get_settings
from pipelines.featurestore.spec import FeatureSet, load_feature_set
from pipelines.usecases import UseCase, get_usecase, list_usecases


@lru_cache(maxsize=1)
def usecases() -> dict[str, UseCase]:
    path = get_settings().usecases_path
    return {name: get_usecase(name, path) for name in list_usecases(path)}


@lru_cache(maxsize=1)
def feature_sets() -> dict[str, FeatureSet]:
    return {name: load_feature_set(u) for name, u in usecases().items()}
