#!/usr/bin/env bash
# Tempest's volume API tests and cinder-tempest-plugin's against a fresh lab's Cinder with the project's plugin
# loaded (lab/tempest.py: tempest.conf from the live lab, tests/tempest/exclude-list.txt); non-zero on any failure.
# Extra arguments go to lab.tempest, e.g. scripts/tempest.sh --regex 'tempest\.api\.volume\.admin\.test_volume_retype'
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec env PYTHONPATH=. .venv/bin/python -m lab.tempest "$@"
