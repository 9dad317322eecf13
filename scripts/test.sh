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

echo "== build bin/jaeger (tools/jaeger module) for the end-to-end test"
(cd tools/jaeger && go build -o ../../bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger)
export ZEROTEL_E2E_JAEGER=1

echo "== go test (root: real kernel, real processes)"
go test -count=1 ./...
