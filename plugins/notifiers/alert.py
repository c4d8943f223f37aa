"""Atelier's alerts as an Airflow notifier: the task log always, and the settings' webhook when configured
(``deploy.webhook_url``; JSON POST, 5 s timeout). Used as ``on_failure_callback`` by DAGs whose failure is a
platform decision someone must see (a rolled-back or refused rollout)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier


class AtelierAlertNotifier(BaseNotifier):
    template_fields = ("event",)

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event

    def notify(self, context: Any) -> None:
        from pipelines.config import get_settings
        from pipelines.deploy.rollout import notify

        ti = context.get("ti") or context.get("task_instance")
        exception = context.get("exception")
        notify(get_settings(), {"event": self.event, "dag_id": getattr(ti, "dag_id", None),
                                "run_id": getattr(ti, "run_id", None), "task_id": getattr(ti, "task_id", None),
                                "reason": str(exception)[:1000] if exception else ""})
