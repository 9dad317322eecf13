#!/usr/bin/env bash
# Load benchmark of `zerotel trace tcp`: N short loopback connections
# (bench/tcpload: connect, write 64 B, read the 64 B echo, close) with and
# without the agent running, in ROUNDS rounds that alternate which goes
# first. Reports connections made, records received for them, events lost,
# the agent's CPU per event, and the load's rate with/without the agent.
# Must run as root.
#
#   bench/tcp_load.sh                 # N=20000 connections, C=8 at a time, 3 rounds
#   N=50000 C=16 ROUNDS=5 bench/tcp_load.sh
#   ZEROTEL_BIN=/path/zerotel bench/tcp_load.sh   # use this agent, don't build bin/zerotel
#   KEEP=1 bench/tcp_load.sh          # keep the agent's output in the work dir
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root

N=${N:-20000}
C=${C:-8}
ROUNDS=${ROUNDS:-3}
TIMEOUT=${TIMEOUT:-5m}
SETTLE=${SETTLE:-2} # seconds for the agent to drain its ring buffer after the load

loadavg_start=$(cut -d" " -f1-3 /proc/loadavg)
build_tools tcpload
load() { "$WORK/tcpload" -n "$N" -c "$C" -timeout "$TIMEOUT" >"$1" || die "tcpload failed"; }
hz=$(getconf CLK_TCK)

# One round with the agent: start it, run the load, let it drain, read its
# counters and CPU, stop it, count its records for the load.
with_agent() {
	local r=$1
	start_agent tcp "$r"
	local cpu0 cpu1
	cpu0=$(cpu_ticks "$AGENT_PID")
	load "$WORK/load-$r.json"
	sleep "$SETTLE"
	"$BENCHUTIL" metric "$METRICS_URL" zerotel_probe_events_read_total probe=tcp >"$WORK/read-$r"
	"$BENCHUTIL" metric "$METRICS_URL" zerotel_probe_events_lost_total probe=tcp >"$WORK/lost-$r"
	cpu1=$(cpu_ticks "$AGENT_PID")
	stop_agent
	echo "$cpu0 $cpu1" >"$WORK/cpu-$r"
	"$BENCHUTIL" count-tcp -port "$(jfield "$WORK/load-$r.json" listen_port)" \
		-pid "$(jfield "$WORK/load-$r.json" pid)" "$AGENT_OUT" >"$WORK/count-$r.json"
}

echo "warming up, then $ROUNDS rounds of $N connections (concurrency $C) without and with the agent ..." >&2
"$WORK/tcpload" -n $((N / 10)) -c "$C" >/dev/null
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) -eq 1 ]; then
		load "$WORK/base-$r.json"
		with_agent "$r"
	else
		with_agent "$r"
		load "$WORK/base-$r.json"
	fi
done

# Per round, and totals.
rows=
ratios=()
conns=0 failed=0 expected=0 records=0 by_pid=0 b64=0 connect=0 accept=0 lines=0 read=0 lost=0
cpu_all=0 cpu_load=0 base_n=0 base_s=0 load_s=0
for r in $(seq "$ROUNDS"); do
	L=$WORK/load-$r.json B=$WORK/base-$r.json K=$WORK/count-$r.json
	read -r c0 c1 <"$WORK/cpu-$r"
	n=$(jfield "$L" connections)
	rec=$(jfield "$K" records)
	rd=$(cat "$WORK/read-$r") ls=$(cat "$WORK/lost-$r")
	ratio=$(calc %.3f "$(jfield "$L" conns_per_sec) / $(jfield "$B" conns_per_sec)")
	ratios+=("$ratio")
	rows+="| $r | $(calc %.0f "$(jfield "$B" conns_per_sec)") | $(calc %.0f "$(jfield "$L" conns_per_sec)") | $ratio | $n | $rec | $(jfield "$K" records_by_pid) | $ls | $(calc %.2f "($c1 - $c0) / $hz") | $(calc %.1f "($c1 - $c0) * 1e6 / $hz / ($rec > 0 ? $rec : 1)") |"$'\n'
	conns=$((conns + n)) failed=$((failed + $(jfield "$L" failed)))
	records=$((records + rec)) by_pid=$((by_pid + $(jfield "$K" records_by_pid)))
	connect=$((connect + $(jfield "$K" connect))) accept=$((accept + $(jfield "$K" accept)))
	b64=$((b64 + $(jfield "$K" bytes_64_64))) lines=$((lines + $(jfield "$K" lines)))
	read=$((read + rd)) lost=$((lost + ls))
	cpu_all=$((cpu_all + c1)) cpu_load=$((cpu_load + c1 - c0))
	base_n=$((base_n + $(jfield "$B" connections)))
	base_s=$(calc %.6f "$base_s + $(jfield "$B" seconds)") load_s=$(calc %.6f "$load_s + $(jfield "$L" seconds)")
done
per() { if [ "$2" -gt 0 ]; then calc %.1f "$1 * 1e6 / $hz / $2"; else echo n/a; fi; }

cat <<REPORT

## zerotel trace tcp under load ($(uname -r), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ))

$ROUNDS rounds of $N loopback connections, concurrency $C. Agent: $ZT
Load average (1/5/15 min) at start: $loadavg_start; at end: $(cut -d" " -f1-3 /proc/loadavg) — other work on the host skews the rates.

| round | conns/s without | conns/s with | ratio | connections | records (port match) | records (pid match) | lost | agent CPU s (load+${SETTLE}s) | agent CPU µs/record |
|---|---|---|---|---|---|---|---|---|---|
${rows}
| total | |
|---|---|
| connections made with the agent | $conns ($failed failed) |
| records for the load | $records of $((2 * conns)) expected (2 per connection): $connect connect, $accept accept; $by_pid with tcpload's pid; $b64 with 64 B sent and received |
| all records the agent printed (host-wide) | $lines |
| zerotel_probe_events_read_total{probe="tcp"} (summed over rounds) | $read |
| zerotel_probe_events_lost_total{probe="tcp"} (summed over rounds) | $lost |
| agent CPU during load + ${SETTLE}s drain | $(calc %.2f "$cpu_load / $hz") s → $(per "$cpu_load" "$records") µs per load record ($(per "$cpu_load" "$read") µs per event read) |
| agent CPU incl. startup (utime+stime before SIGINT) | $(calc %.2f "$cpu_all / $hz") s → $(per "$cpu_all" "$records") µs per load record |
| conns/s without / with the agent (all rounds) | $(calc %.0f "$base_n / $base_s") / $(calc %.0f "$conns / $load_s") |
| ratio with/without: all rounds / median of rounds | $(calc %.3f "($conns / $load_s) / ($base_n / $base_s)") / $(median "${ratios[@]}") |
REPORT

if [ "$records" -ne $((2 * conns)) ] || [ "$lost" -ne 0 ] || [ "$failed" -ne 0 ]; then
	echo
	echo "note: records != 2 x connections, events lost, or connections failed (see above)"
fi
