# goprof: `sudo make demo` shows it, `sudo make test` tests it (both set up first).
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
VENV := .venv
PY := $(VENV)/bin/python
OUT := out
GO := go

.PHONY: setup setup-test demo test lint proto bench clean

setup:
	bash deploy/setup.sh

setup-test:
	bash deploy/setup.sh --test

# Build the sample service, profile it for 10 s, print the top functions and write
# pprof + speedscope + folded into out/.
demo: setup
	@mkdir -p $(OUT)
	$(PY) -c 'from tests import gobuild; print(gobuild.build("demoservice").path)' > $(OUT)/.demo-bin
	@set -e; bin=$$(cat $(OUT)/.demo-bin); \
	  $$bin -addr 127.0.0.1:0 > $(OUT)/demoservice.log 2>&1 & pid=$$!; \
	  trap "kill $$pid 2>/dev/null" EXIT; sleep 1; \
	  echo "profiling the demo service (pid $$pid) for 10 s"; \
	  goprof cpu --pid $$pid --duration 10s -o $(OUT)/demo.pb.gz \
	    -o $(OUT)/demo.speedscope.json -o $(OUT)/demo.folded; \
	  echo; echo "CPU by the service's pprof label route (go tool pprof -tags):"; \
	  $(GO) tool pprof -tags $(OUT)/demo.pb.gz 2>/dev/null | sed -n '/route:/,/^ *$$/p'; \
	  echo "its goroutines now (goprof goroutines):"; \
	  goprof goroutines --pid $$pid -o $(OUT)/demo-goroutines.pb.gz; \
	  echo; echo "open them with: go tool pprof -http=127.0.0.1:8080 $(OUT)/demo.pb.gz" \
	    "| speedscope $(OUT)/demo.speedscope.json | flamegraph.pl $(OUT)/demo.folded"; \
	  echo "  go tool pprof -tagfocus route=/hash -top $(OUT)/demo.pb.gz"

test: setup-test
	$(PY) -m ruff check .
	$(PY) -m pytest -ra

lint:
	$(PY) -m ruff check .

# Regenerate the protobuf code (committed): pprof, and Parca's write API (whose gRPC stub
# imports its messages as a top-level module: sed makes it a package import).
proto:
	$(VENV)/bin/pip install -q -e '.[proto]'
	$(PY) -m grpc_tools.protoc -I exporters/proto --python_out=exporters/proto exporters/proto/profile.proto
	$(PY) -m grpc_tools.protoc -I exporters/proto --python_out=exporters/proto --grpc_python_out=exporters/proto exporters/proto/parca_profilestore.proto
	sed -i 's/^import parca_profilestore_pb2 as /from goprof.exporters.proto import parca_profilestore_pb2 as /' exporters/proto/parca_profilestore_pb2_grpc.py

bench: setup-test
	$(PY) bench/run_all.py

clean:
	rm -rf $(OUT) build .pytest_cache
