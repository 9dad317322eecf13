#!/usr/bin/env bash
# Installs what goprof needs on a Debian host, only what is missing, and goprof itself:
#   - python3-bpfcc (bcc's Python module; PyPI's "bcc" is another project), python3-venv
#   - kernel headers bcc compiles against; when the running kernel ships none, Debian's
#     linux-headers-amd64, linked at /lib/modules/$(uname -r)/{build,source}
#     (never replacing headers the system already has there)
#   - a virtualenv (.venv, --system-site-packages so it sees Debian's bcc) with goprof
#     and its dev extras, and /usr/local/bin/goprof: a launcher (deploy/launcher.sh) that
#     runs it, and tells users who cannot read this checkout that goprof needs root
#   - the compiled BPF program cache (goprof doctor compiles and loads it once)
# With --test: also what the tests need: Go 1.27.3 (module proxy), Chromium and the
# speedscope app (npm) for the browser test.
# Run as root. Quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WANT_TEST=0
[ "${1:-}" = "--test" ] && WANT_TEST=1

say() { printf 'setup: %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "setup: run as root (sudo make setup)" >&2; exit 2; }

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $APT_UPDATED = 0 ]; then apt-get update -q >/dev/null; APT_UPDATED=1; fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install python3-bpfcc python3-venv

# Kernel headers for bcc.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/build/include" ]; then
  if [ $APT_UPDATED = 0 ]; then apt-get update -q >/dev/null; APT_UPDATED=1; fi
  if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
    apt_install "linux-headers-$KREL"
  else
    apt_install linux-headers-amd64
    HDR=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n1)
    COMMON=${HDR%-amd64}-common
    [ -d "$HDR" ] && [ -d "$COMMON" ] || { echo "setup: no usable kernel headers under /usr/src" >&2; exit 2; }
    mkdir -p "$MODDIR"
    # Only links of our own: a real build/ or source/ of the system is left alone.
    for pair in "build:$HDR" "source:$COMMON"; do
      link=$MODDIR/${pair%%:*}
      if [ -L "$link" ] || [ ! -e "$link" ]; then ln -sfn "${pair#*:}" "$link"; fi
    done
    say "bcc will compile against $HDR (this kernel, $KREL, ships no headers)"
  fi
fi

# The virtualenv: Debian's python3, which has bcc's module.
VENV=$REPO/.venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
STAMP=$VENV/.goprof-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  say "installing goprof into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]"
  touch "$STAMP"
fi
bash deploy/launcher.sh "$VENV/bin/goprof" /usr/local/bin/goprof

if [ $WANT_TEST = 1 ]; then
  command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || {
    echo "setup: Go is needed to build the test programs (Go 1.26 at /usr/local/go)" >&2; exit 2; }
  export PATH=$PATH:/usr/local/go/bin
  GOTOOLCHAIN=go1.27.3 go version >/dev/null  # fetched once from the module proxy
  apt_install chromium
  # playwright-core (the browser test's driver) needs Node.js 20+; Debian 12's own is 18.
  node_major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')
  if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
    echo "setup: the browser test needs Node.js 20 or newer (found: ${node_major:-none})" >&2; exit 2
  fi
  if [ -f tests/browser/package-lock.json ] && \
     { [ ! -d tests/browser/node_modules ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; }; then
    say "installing the speedscope app for the browser test"
    npm ci --prefix tests/browser --no-audit --no-fund >/dev/null
    touch tests/browser/node_modules
  fi
fi

# Compile (once per kernel and source) and check: doctor loads and attaches the program.
"$VENV/bin/goprof" doctor >/tmp/goprof-doctor.txt 2>&1 || { cat /tmp/goprof-doctor.txt; exit 2; }
say "ready: $(tail -n1 /tmp/goprof-doctor.txt)"
