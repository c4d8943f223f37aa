"""Registers the Atelier console with Airflow: the FastAPI app at ``/atelier`` (served by Airflow's API
server, behind its authentication), an "Atelier" entry in the UI's navigation that shows it inside Airflow's
page. (The task extra links, ``plugins.console.links``, are set on the DAGs' tasks.) The only module of this folder Airflow imports as a plugin (.airflowignore).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.console.app import PREFIX, app


class AtelierConsolePlugin(AirflowPlugin):
    name = "atelier_console"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "Atelier console"}]
    external_views = [{"name": "Atelier", "href": f"{PREFIX}/", "destination": "nav", "category": "browse",
                       "url_route": "atelier"}]
