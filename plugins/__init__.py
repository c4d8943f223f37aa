"""Atelier's Airflow extensions, split the provider way: ``operators/`` (the Spark job operator),
``notifiers/`` (alerts), the Assets declared once (``assets.py``), what the DAG files share at parse time
(``intervals.py``, ``usecases.py``), and the Atelier console (``atelier_console.py`` registers ``console/``).

Only DAG files and this package import Airflow; the platform library (`pipelines`) never does.
"""
