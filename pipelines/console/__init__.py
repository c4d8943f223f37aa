"""What the Atelier console shows and does, without Airflow: read models over MLflow, the lake's tables, the
routing table, the online store and the reports (:mod:`pipelines.console.data`), and the catalogue of actions
that go through the DAGs (:mod:`pipelines.console.actions`). The Airflow plugin (``plugins/console``) only
renders and authenticates.
"""
