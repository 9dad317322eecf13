#!/usr/bin/env bash
# HTTP tracing overhead, measured as ratios in one run: a Go server (bench/hello)
# under wrk, alternating rounds without and with `zerotel run --exe` attached
# (full HTTP tracing: spans built, metrics recorded; --output none so the
# terminal is not what is measured).
#
#   sudo bench/http_load.sh               # ROUNDS=3 DUR=10s CONNS=16 SAMPLE=1 by default
#
# Reports per path ("/" answers at once, "/sleep" after 1 ms): requests/s and
# p50/p99 latency (medians over rounds), with/without ratios, uprobe hits per
# request (BPF run counts, kernel.bpf_stats_enabled) and agent CPU per span.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10s}
CONNS=${CONNS:-16}
PORT=${PORT:-18089}
SAMPLE=${SAMPLE:-1} # --sample-ratio of the traced runs

[ "$(id -u)" -eq 0 ] || { echo "http_load.sh: run as root (the agent loads eBPF programs)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "http_load.sh: wrk not found: apt-get install wrk" >&2; exit 1; }
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
SERVER_PID= AGENT_PID=
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
	[ -n "$AGENT_PID" ] && kill -INT "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
	sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"
	rm -rf "$WORK"
}
trap cleanup EXIT

go build -o bin/zerotel ./cmd/zerotel
go build -o "$WORK/hello" ./bench/hello
sysctl -qw kernel.bpf_stats_enabled=1
"$WORK/hello" -addr 127.0.0.1:$PORT >/dev/null &
SERVER_PID=$!
sleep 0.5

# Run counts of the zt_http_* programs of one type: kprobe (each run is a
# uprobe hit) or tracepoint (the read() tracepoint).
bpf_runs() {
	bpftool prog show -j | python3 -c '
import json, sys
print(sum(p.get("run_cnt", 0) for p in json.load(sys.stdin)
          if p.get("name", "").startswith("zt_http") and p.get("type") == sys.argv[1]))' "$1"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_agent() {
	bin/zerotel run --exe "$WORK/hello" --output none --metrics-addr 127.0.0.1:0 --sample-ratio "$SAMPLE" 2>"$WORK/agent.err" &
	AGENT_PID=$!
	for _ in $(seq 100); do grep -q "msg=tracing" "$WORK/agent.err" && return; sleep 0.1; done
	echo "agent did not attach:" >&2; cat "$WORK/agent.err" >&2; exit 1
}
stop_agent() { kill -INT "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=; }

# run_wrk PATH -> "reqs_per_s p50_ms p99_ms requests"
run_wrk() {
	wrk -t1 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$PORT$1" | awk '
		function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
		/Requests\/sec/ { rps = $2 }
		/ 50%/ { p50 = ms($2) }
		/ 99%/ { p99 = ms($2) }
		/requests in/ { n = $1 }
		END { printf "%s %.3f %.3f %s\n", rps, p50, p99, n }'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf "zerotel HTTP overhead: wrk -t1 -c%s -d%s, %s alternating rounds, sample ratio %s, %s cores, %s\n\n" "$CONNS" "$DUR" "$ROUNDS" "$SAMPLE" "$(nproc)" "$(go version | awk '{print $3}')"
printf "| path | mode | req/s | p50 ms | p99 ms | ratio req/s | uprobe hits/req | tracepoint hits/req | agent CPU µs/span |\n|---|---|---|---|---|---|---|---|---|\n"
for path in / /sleep; do
	: >"$WORK/base" ; : >"$WORK/traced" ; : >"$WORK/hits" ; : >"$WORK/tphits" ; : >"$WORK/cpu"
	for _ in $(seq "$ROUNDS"); do
		run_wrk "$path" >>"$WORK/base"
		start_agent
		runs0=$(bpf_runs kprobe); tp0=$(bpf_runs tracepoint); t0=$(cpu_ticks "$AGENT_PID")
		out=$(run_wrk "$path"); echo "$out" >>"$WORK/traced"
		runs1=$(bpf_runs kprobe); tp1=$(bpf_runs tracepoint); t1=$(cpu_ticks "$AGENT_PID")
		n=$(echo "$out" | awk '{print $4}')
		awk -v r=$((runs1 - runs0)) -v n="$n" 'BEGIN {printf "%.3f\n", r/n}' >>"$WORK/hits"
		awk -v r=$((tp1 - tp0)) -v n="$n" 'BEGIN {printf "%.3f\n", r/n}' >>"$WORK/tphits"
		awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f\n", t/hz*1e6/n}' >>"$WORK/cpu"
		stop_agent
	done
	for mode in base traced; do
		rps=$(awk '{print $1}' "$WORK/$mode" | median)
		p50=$(awk '{print $2}' "$WORK/$mode" | median)
		p99=$(awk '{print $3}' "$WORK/$mode" | median)
		eval "${mode}_rps=$rps"
		if [ $mode = base ]; then
			printf "| %s | without | %.0f | %.3f | %.3f | | | | |\n" "$path" "$rps" "$p50" "$p99"
		else
			ratio=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN {printf "%.3f", a/b}')
			printf "| %s | with zerotel | %.0f | %.3f | %.3f | %s | %s | %s | %s |\n" "$path" "$rps" "$p50" "$p99" "$ratio" \
				"$(median <"$WORK/hits")" "$(median <"$WORK/tphits")" "$(median <"$WORK/cpu")"
		fi
	done
done
