#!/usr/bin/env bash
# Installs what zerotel needs to build, regenerate and test on Debian 12, as
# root, and mounts tracefs. Safe to run again: it installs only what is missing.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "setup.sh: run as root (sudo): it installs packages and loads eBPF programs" >&2
	exit 2
fi

need=()
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || need+=(bpftool)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
	echo "setup.sh: installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH=$PATH:/usr/local/go/bin
	else
		echo "setup.sh: Go 1.26 or newer is needed (https://go.dev/doc/install)" >&2
		exit 2
	fi
fi

# Tracepoint attach needs tracefs; minimal hosts often lack the mount.
[ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing
