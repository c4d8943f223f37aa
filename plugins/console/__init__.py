"""The Atelier console inside Airflow's UI: a FastAPI app (``app``), its charts and templates, and the task
extra links (``links``). ``plugins/atelier_console.py`` registers them with Airflow."""
