#!/usr/bin/env bash
# Install everything the project needs on Debian 12: the lab's data-plane
# programs and OpenStack services (apt), the project's virtualenv (.venv),
# Keystone's, Cinder's and Tempest's (.venv-keystone, .venv-cinder,
# .venv-tempest). Idempotent and quiet when there is nothing to do; run as
# root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-common  # qemu-storage-daemon: the reference arrays
  qemu-utils          # qemu-img
  qemu-block-extra
  nbdkit              # the plain array's NBD server
  fio                 # benchmarks and I/O tests (--ioengine=nbd)
  jq                  # the README's REST example (run verbatim by tests/integration/test_readme_rest.py)
  python3-libnbd      # verifying NBD client and host copy
  libnbd-bin          # nbdsh, nbdcopy, nbdfuse
  python3-venv
  python3-pip
  postgresql          # the lab's database server (Keystone, Cinder); its own cluster per lab
  rabbitmq-server     # the lab's message queue (Cinder); its own node per lab
  redis-server        # the Celery broker of lab up --executor celery; its own server per lab
  chromium            # headless browser for the UI tests (driven by Playwright from .venv)
  prometheus          # the lab's Prometheus, scraping the operator view's /metrics (lab/services/prometheus.py)
  build-essential     # uWSGI builds from source in .venv-keystone
  python3-dev
  ceph-mon            # the lab's Ceph 16.2: one monitor, one manager, one OSD (lab/services/ceph.py)
  ceph-mgr
  ceph-osd
  ceph-common         # the ceph and rbd tools
  python3-rados       # librados' and librbd's Python bindings: Cinder's RBD driver, the lab's checks
  python3-rbd
)

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# make_venv DIR CHECK_IMPORT VENV_ARGS REQUIREMENTS...: a virtualenv from Debian's
# /usr/bin/python3, (re)installed when its requirements files change.
make_venv() {
  local dir=$1 check=$2 venv_args=$3
  shift 3
  if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "$check" 2>/dev/null; then
    echo "bootstrap: creating $dir from /usr/bin/python3" >&2
    rm -rf "$dir"
    # shellcheck disable=SC2086
    /usr/bin/python3 -m venv $venv_args "$dir"
  fi
  local stamp="$dir/.requirements.sha256" want
  want=$(cat "$@" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing $* into $dir" >&2
    local reqs=()
    for r in "$@"; do reqs+=(-r "$r"); done
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "${reqs[@]}"
    echo "$want" >"$stamp"
  fi
}

# The project's own: libnbd's Python binding is built for Debian's interpreter, hence system site packages.
make_venv .venv "import nbd" --system-site-packages requirements.txt requirements-dev.txt
# ... and the project itself, as the Airflow provider it is (editable: the working tree is the code), so that
# Airflow registers its connection types and their forms (plugins/provider_info.py, pyproject.toml).
project_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
if [ "$(cat .venv/.project.stamp 2>/dev/null)" != "$project_stamp" ]; then
  echo "bootstrap: installing the project into .venv (pip install -e .)" >&2
  # a stale egg-info in the tree (from a build of an older pyproject) would shadow the entry points on PYTHONPATH
  rm -rf ./*.egg-info
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$project_stamp" >.venv/.project.stamp
fi
# Keystone and Cinder run from virtualenvs of their own (their dependencies are not the project's).
make_venv .venv-keystone "import sys" "" requirements-keystone.txt
make_venv .venv-cinder "import sys" "" requirements-cinder.txt
# Tempest and cinder-tempest-plugin, pinned, for lab/tempest.py (the public checks a Cinder plugin is held to).
make_venv .venv-tempest "import tempest" "" requirements-tempest.txt
# Cinder's own RBD driver needs librados' and librbd's Python bindings, and Cinder's own copy opens the lab
# arrays' NBD volumes with libnbd's (include/connectors.py): Debian builds them for its python3 only, so those
# modules (not the rest of Debian's dist-packages) are linked into .venv-cinder.
cinder_site=$(.venv-cinder/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
for file in rados.cpython-*.so rbd.cpython-*.so libnbdmod.cpython-*.so nbd.py; do
  for found in /usr/lib/python3/dist-packages/$file; do
    [ -e "$cinder_site/$(basename "$found")" ] || ln -s "$found" "$cinder_site/"
  done
done
