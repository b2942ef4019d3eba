"""The operator view: a page in Airflow's UI with the migrations and rebalances, and controls for a running copy.

An Airflow plugin, registered by the installed distribution (entry point
``airflow.plugins`` in ``pyproject.toml``), that adds to the api-server a
FastAPI app under ``/volume-migration`` (``plugins/operator_view_app.py``:
the page, the rows as JSON, pause/resume/speed of a takeover's copy) and an
entry "Volume migrations" in the UI's Browse menu that shows the page inside
Airflow's UI. Every component loads plugins; only the api-server mounts the
app, so it is imported only when the api-server asks for it.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/volume-migration"


class _App:
    """``fastapi_apps``, built when first read (by the api-server): no FastAPI import in workers."""

    def __get__(self, obj: Any, owner: Any) -> list[dict[str, Any]]:
        from plugins.operator_view_app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Volume migrations"}]


class OperatorViewPlugin(AirflowPlugin):
    name = "volume_migration_operator_view"
    fastapi_apps = _App()  # type: ignore[assignment]
    external_views = [
        {
            "name": "Volume migrations",
            "href": URL_PREFIX.lstrip("/") + "/",  # relative to the UI's base URL
            "url_route": "volume-migrations",
            "destination": "nav",
            "category": "browse",
        }
    ]
