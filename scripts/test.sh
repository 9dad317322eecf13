#!/usr/bin/env bash
# Runs every zerotel check on this machine, as root: set-up, generated-file
# drift, vet, and all tests (they load real BPF programs into this kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=$PATH:/usr/local/go/bin

echo "== regenerate BPF objects and check they match what is committed"
make check-generate

echo "== go vet"
go vet ./...

echo "== go test (root: real kernel, real processes)"
go test -count=1 ./...
