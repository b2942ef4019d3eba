#!/usr/bin/env bash
# Build the Cinder side's wheel (cinder-async-migration: the API extension, the volume manager, the drivers and
# the modules they import, nothing of Airflow) into the folder given (default: dist/), from a staging copy so that
# nothing is written into the tree. Prints the wheel's path. Install it into Cinder's own environment:
#   <cinder's venv>/bin/pip install dist/cinder_async_migration-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp cinder_dist/pyproject.toml cinder_dist/README.md "$stage/"
mkdir -p "$stage/include"
cp include/__init__.py include/connectors.py include/host_copy.py include/block_devices.py "$stage/include/"
for package in cinder_plugin backends; do
  mkdir -p "$stage/include/$package"
  cp include/$package/*.py "$stage/include/$package/"
done
.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$out" "$stage" >&2
ls -t "$out"/cinder_async_migration-*.whl | head -1
