#!/usr/bin/env bash
# Install everything the project needs on Debian 12: the lab's data-plane
# programs (apt) and the project's virtualenv (.venv). Idempotent and quiet
# when there is nothing to do; run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-common  # qemu-storage-daemon: the reference arrays
  qemu-utils          # qemu-img
  qemu-block-extra
  nbdkit              # the plain array's NBD server
  fio                 # benchmarks and I/O tests (--ioengine=nbd)
  python3-libnbd      # verifying NBD client and host copy
  libnbd-bin          # nbdsh, nbdcopy, nbdfuse
  python3-venv
  python3-pip
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

# libnbd's Python binding is built for Debian's interpreter: base the venv on it.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import nbd' 2>/dev/null; then
  echo "bootstrap: creating .venv from /usr/bin/python3" >&2
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python requirements" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
  echo "$want" >"$stamp"
fi
