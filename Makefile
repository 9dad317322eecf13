# zerotel build. `go build ./...` needs no clang: the bpf2go outputs are committed.
GO ?= go
CLANG ?= clang

.PHONY: all build generate check-generate test vmlinux

all: build

build:
	$(GO) build -o bin/zerotel ./cmd/zerotel

# Regenerate every bpf2go output (Debian's clang; bpf2go is a go tool).
generate:
	BPF2GO_CC=$(CLANG) $(GO) generate ./probes/...

# Fail when the committed generated files differ from a fresh generate.
check-generate: generate
	@git diff --exit-code --stat -- '*_bpfel.go' '*_bpfel.o' || \
		(echo "generated BPF files are stale: run make generate and commit" >&2; exit 1)

test:
	$(GO) test ./...

# Re-dump the kernel types CO-RE programs compile against (committed).
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/headers/vmlinux.h
