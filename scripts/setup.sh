#!/usr/bin/env bash
# Installs everything edge_mnv1 needs on a Debian x86-64 machine: the system toolchains and
# emulators, then a venv with the pinned Python packages. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(cmake ninja-build make gcc g++
  gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user
  gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
  openssh-server openssh-client
  ser2net socat
  clang-14 libclang-rt-14-dev llvm-14)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
# Stamp the lock file's hash so an unchanged environment costs one comparison.
stamp=.venv/.edge_mnv1-lock
want="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages (pinned in requirements.lock)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  # xgboost-cpu replaced xgboost, whose nvidia-nccl-cu12 is 469 MB of GPU libraries; both
  # install the same `xgboost` module, so a venv made before drops the old one first.
  if .venv/bin/python -m pip show -q xgboost >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -y -q xgboost nvidia-nccl-cu12 >&2
  fi
  # torch==2.13.0 exactly: the CPU build lies on this machine's disk.
  .venv/bin/python -m pip install -q -r requirements.lock >&2
  .venv/bin/python -m pip install -q --no-deps -e . >&2
  echo "$want" > "$stamp"
fi
# ONNX Runtime's own aarch64 build under qemu-aarch64: what `bench` compares Pi programs with.
./scripts/setup_ort_aarch64.sh
echo "setup: ready" >&2
