#!/usr/bin/env bash
# The agent's own CPU and memory when it exports every span over OTLP/gRPC:
# bench/hello under wrk, zerotel run --exe attached, a local Jaeger v2
# (bin/jaeger, tools/jaeger) receiving. Alternating runs with Go's default
# GC settings (GOGC=100, no memory limit) and with zerotel's defaults
# (GOGC=400, GOMEMLIMIT=512MiB; see cmd/zerotel/gc.go).
#
#   sudo bench/otlp_export.sh          # ROUNDS=3 DUR=5s
#
# Reports per run: spans (wrk's requests), agent CPU µs per span, agent peak RSS.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5s}
[ "$(id -u)" -eq 0 ] || { echo "otlp_export.sh: run as root (the agent loads eBPF programs)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "otlp_export.sh: wrk not found: apt-get install wrk" >&2; exit 1; }
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

go build -o bin/zerotel ./cmd/zerotel
go build -o "$WORK/hello" ./bench/hello
[ -x bin/jaeger ] || (cd tools/jaeger && go build -o ../../bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger)

PORT=18088 OTLP=127.0.0.1:14317
ZT_JAEGER_OTLP_GRPC=$OTLP ZT_JAEGER_OTLP_HTTP=127.0.0.1:14318 ZT_JAEGER_QUERY_HTTP=127.0.0.1:16686 \
	ZT_JAEGER_QUERY_GRPC=127.0.0.1:16685 bin/jaeger --config file:tools/jaeger/config.yaml >"$WORK/jaeger.log" 2>&1 &
PIDS+=($!)
"$WORK/hello" -addr 127.0.0.1:$PORT >/dev/null &
PIDS+=($!)
sleep 3

# run ENV... -> "spans µs/span peak_rss_MB"
run() {
	env "$@" bin/zerotel run --exe "$WORK/hello" --output none --otlp-endpoint "http://$OTLP" --otlp-protocol grpc 2>"$WORK/agent.err" &
	local agent=$!
	for _ in $(seq 100); do grep -q "msg=tracing" "$WORK/agent.err" && break; sleep 0.1; done
	local t0 t1 n
	t0=$(awk '{print $14 + $15}' /proc/$agent/stat)
	n=$(wrk -t1 -c16 -d"$DUR" "http://127.0.0.1:$PORT/" | awk '/requests in/ {print $1}')
	sleep 1 # the last batch
	t1=$(awk '{print $14 + $15}' /proc/$agent/stat)
	local rss
	rss=$(awk '/VmHWM/ {print $2}' /proc/$agent/status)
	kill -INT $agent
	wait $agent || true
	awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v rss="$rss" \
		'BEGIN {printf "%d %.1f %.0f\n", n, t/hz*1e6/n, rss/1024}'
}

printf "| run | GC settings | spans | agent CPU µs/span | agent peak RSS MB |\n|---|---|---|---|---|\n"
for r in $(seq "$ROUNDS"); do
	read -r n us mb < <(run GOGC=100 GOMEMLIMIT=off)
	printf "| %d | GOGC=100 | %s | %s | %s |\n" "$r" "$n" "$us" "$mb"
	read -r n us mb < <(run)
	printf "| %d | zerotel's defaults | %s | %s | %s |\n" "$r" "$n" "$us" "$mb"
done
