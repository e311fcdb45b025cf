#!/usr/bin/env bash
# Installs ONNX Runtime's own aarch64 build, with Debian's arm64 Python 3.11 to run it, into
# .venv/aarch64-root, for counting its instructions under qemu-aarch64
# (edge_mnv1/emulators/ort_aarch64.py). Nothing is installed on the system: the arm64 .debs
# are fetched with a private apt state and unpacked, the wheels are fetched for aarch64 by pip.
# Idempotent: a second run compares one stamp and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=.venv/aarch64-root
# Same versions as requirements.lock; ONNX Runtime's declared dependencies, sympy is optional.
WHEELS=(onnxruntime==1.32.0 numpy==2.4.6 flatbuffers==25.12.19 protobuf==7.36.2 packaging==26.4)
# Their dependency closure comes from Debian 12 (bookworm); versions land in ROOT/VERSIONS.
DEBS=(python3.11-minimal libpython3.11-stdlib libstdc++6)

want="$(sha256sum "$0" | cut -d' ' -f1)"
if [ "$(head -n1 "$ROOT/.stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup_ort_aarch64: ready ($ROOT)" >&2
  exit 0
fi
[ -x .venv/bin/python ] || { echo "setup_ort_aarch64: no .venv; run scripts/setup.sh first" >&2; exit 1; }
for tool in qemu-aarch64 apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "setup_ort_aarch64: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
touch "$tmp/status"
# arm64 only, with an empty dpkg status so that apt resolves the whole closure, and with its
# own lists: the system's architectures and package lists stay as they are.
cat > "$tmp/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Sandbox::User "root";
Dir::State "$tmp";
Dir::State::lists "$tmp/lists";
Dir::State::status "$tmp/status";
Dir::Cache "$tmp/cache";
EOF
export APT_CONFIG="$tmp/apt.conf"
echo "setup_ort_aarch64: fetching Debian's arm64 Python 3.11" >&2
apt-get update -qq >&2
mapfile -t pkgs < <(apt-get -s install --no-install-recommends "${DEBS[@]}" \
  | awk '/^Inst / {print $2 "=" substr($3, 2)}')
(cd "$tmp/debs" && apt-get download -qq "${pkgs[@]}" >&2)
unset APT_CONFIG

# The stamp is written last: a root without it is incomplete and rebuilt from scratch.
rm -rf "$ROOT"
mkdir -p "$ROOT"
for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
echo "setup_ort_aarch64: fetching the aarch64 wheels: ${WHEELS[*]}" >&2
.venv/bin/python -m pip install -q --no-deps --only-binary=:all: --python-version 3.11 \
  --implementation cp --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
  --target "$ROOT/usr/lib/python3/dist-packages" "${WHEELS[@]}" >&2
# Byte-compile once, with the arm64 Python itself: a guest that compiled its imports on first
# use would count the compilation in one run and not in the next.
qemu-aarch64 -cpu cortex-a72 -L "$ROOT" "$ROOT/usr/bin/python3.11" -m compileall -q \
  "$ROOT/usr/lib/python3.11" "$ROOT/usr/lib/python3/dist-packages" >/dev/null
{
  printf '%s\n' "${pkgs[@]}"
  printf '%s\n' "${WHEELS[@]}"
} > "$ROOT/VERSIONS"
printf '%s\n%s\n' "$want" "$(sha256sum "$ROOT/VERSIONS" | cut -d' ' -f1)" > "$ROOT/.stamp"
echo "setup_ort_aarch64: ready ($ROOT)" >&2
