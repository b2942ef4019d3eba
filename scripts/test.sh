#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run every check: lint, format, the import contracts
# (pyproject.toml [tool.importlinter]), tests.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
