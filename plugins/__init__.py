"""Atelier's Airflow extensions, split the provider way (hooks, operators, sensors) plus shared Assets.

Only DAG files and this package import Airflow; the platform library (`pipelines`) never does.
"""
