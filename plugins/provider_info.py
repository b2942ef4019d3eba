"""The project as an Airflow provider: its connection types and the fields of their forms.

``pip install .`` registers ``get_provider_info`` under the entry point group
``apache_airflow_provider`` (pyproject.toml): Airflow then lists the project
under Providers and its Connections form shows, for each connection type,
these fields with their labels, placeholders and help. Airflow registers
connection types only from installed distributions, never from the plugins
folder (apache/airflow issue 20317).

Airflow reads this module while it starts (``import airflow`` discovers
providers), so it imports nothing. The connection type names are defined
here, once; the hooks take them from here.
"""

from __future__ import annotations

from typing import Any

DISTRIBUTION = "cinder-async-migration"  # [project].name in pyproject.toml: Airflow requires them equal
CINDER_CONN_TYPE = "openstack_cinder"
CINDER_HOOK_NAME = "OpenStack Cinder"

_TEXT = {"type": ["string", "null"]}


def _text(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {**_TEXT, **schema}}


CINDER_FIELDS: dict[str, dict[str, Any]] = {
    "project_name": _text(
        "Project", "the Keystone project the token is scoped to (the admin project)", examples=["admin"]
    ),  # fmt: skip
    "user_domain_name": _text("User domain", "the user's Keystone domain", default="Default"),
    "project_domain_name": _text("Project domain", "the project's Keystone domain", default="Default"),
    "application_credential_id": _text(
        "Application credential ID", "instead of a user: the password field then holds the credential's secret"
    ),
    "region_name": _text("Region", "the region of the block-storage endpoint in the catalog (empty: any)"),
    "interface": _text(
        "Endpoint interface", "which catalog endpoint to call", default="public", enum=["public", "internal", "admin"]
    ),  # fmt: skip
    "ca_file": _text("CA bundle", "path of the CA certificates that sign Keystone's and Cinder's TLS, on workers"),
    "insecure": {
        "label": "Skip TLS verification",
        "description": "do not verify TLS certificates (tests only)",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
    "api_version": _text(
        "Microversion", "Block Storage API microversion (empty: the one the project pins)", examples=["3.71"]
    ),  # fmt: skip
}


def get_provider_info() -> dict[str, Any]:
    """What Airflow's ProvidersManager reads (validated against its provider_info schema)."""
    return {
        "package-name": DISTRIBUTION,
        "name": "Cinder async volume migration",
        "description": "Async volume migration between OpenStack Cinder backends: hooks, sensors and triggers.",
        "connection-types": [
            {
                "connection-type": CINDER_CONN_TYPE,
                "hook-class-name": "plugins.hooks.cinder.CinderHook",
                "hook-name": CINDER_HOOK_NAME,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Keystone URL", "login": "User name", "password": "Password or secret"},
                    "placeholders": {
                        "host": "https://keystone.example.com:5000/v3",
                        "login": "a user with the admin role (empty with an application credential)",
                        "password": "the user's password, or the application credential's secret",
                    },
                },
                "conn-fields": CINDER_FIELDS,
            },
        ],
    }
