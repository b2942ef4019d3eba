#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run every check: lint, format, the import contracts
# (pyproject.toml [tool.importlinter]), tests: all of them with Airflow on the LocalExecutor, then those
# marked on_celery_in_ci again in a lab whose Airflow runs on Celery (Redis, two workers), then Tempest's volume
# API tests and cinder-tempest-plugin's against the lab's Cinder with the plugin loaded (scripts/tempest.sh).
# Extra arguments go to pytest instead, e.g. scripts/test.sh tests/unit -x, or
# scripts/test.sh --executor celery tests/integration/test_volume_migration.py (every migration test on Celery)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
if (($#)); then
  exec .venv/bin/python -m pytest "$@"
fi
# A run that hangs past its budget (normally about 32 and 5 minutes) gets SIGABRT: Python's faulthandler prints
# every thread's stack, and CI fails with where it hung, well inside its 90 minutes
timeout --signal=ABRT 55m .venv/bin/python -m pytest --durations=15
timeout --signal=ABRT 15m .venv/bin/python -m pytest --durations=5 --executor celery -m on_celery_in_ci tests/integration
exec scripts/tempest.sh
