"""Atelier's online serving package: the prediction API, its online-feature and Triton clients.

It has its own settings and image (docker/serving) and never imports Airflow. The API itself arrives with
the online-prediction work; the Triton model runtime lives in the serving venv (see pipelines.services.triton).
"""
