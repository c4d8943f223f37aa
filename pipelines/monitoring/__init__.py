"""The way back from serving: the prediction log as a lake table, outcomes, their join, online metrics,
served-feature skew, recalibration, and the replay that drives real traffic through the API.

Plain Python and Spark; no Airflow imports (``dags/monitoring_feedback.py`` wires the jobs)."""
