"""Atelier's platform library: plain, typed Python used by the DAGs, the CLI and the Spark jobs.

Nothing here imports Airflow; heavy libraries (pyspark, xgboost, mlflow, great_expectations) are imported
inside the functions that need them.
"""
