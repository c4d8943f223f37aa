"""Atelier's feature definition language (one definition, compiled to Spark and to Python).

The language reference, the semantics (nulls, NaN, inf, bucket edges, hashing, windows) and the API are
documented in :mod:`pipelines.features.dsl`. Importing this package does not import pyspark.
"""

# The public API is the one pipelines.features.dsl declares: one list, kept there.
from pipelines.features.dsl import *  # noqa: F403
from pipelines.features.dsl import __all__  # noqa: F401
