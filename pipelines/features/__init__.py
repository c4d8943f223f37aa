"""Atelier's feature definition language (one definition, compiled to Spark and to Python).

The language reference, the semantics (nulls, NaN, inf, bucket edges, hashing, windows) and the API are
documented in :mod:`pipelines.features.dsl`. Importing this package does not import pyspark.
"""

from pipelines.features.dsl import (
    DTYPES,
    EntityHistory,
    FeatureDefinitionError,
    FeatureExpr,
    aggregate_python,
    compile_python,
    compile_spark,
    evaluate_history,
    parse_feature,
    parse_features,
    with_features,
)

__all__ = [
    "DTYPES",
    "EntityHistory",
    "FeatureDefinitionError",
    "FeatureExpr",
    "aggregate_python",
    "compile_python",
    "compile_spark",
    "evaluate_history",
    "parse_feature",
    "parse_features",
    "with_features",
]
