#!/usr/bin/env bash
# Load benchmark of `zerotel trace exec`: N runs of `/bin/true MARKER`
# (bench/execload) with and without the agent running, in ROUNDS rounds that
# alternate which goes first. Reports processes spawned, exec (and exit)
# records received for them, events lost, the agent's CPU per event, and the
# spawn rate with/without the agent. Must run as root.
#
#   bench/exec_load.sh                # N=5000 processes, C=2 at a time, 3 rounds
#   N=20000 C=4 ROUNDS=5 bench/exec_load.sh
#   ZEROTEL_BIN=/path/zerotel bench/exec_load.sh  # use this agent, don't build bin/zerotel
#   KEEP=1 bench/exec_load.sh         # keep the agent's output in the work dir
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root

N=${N:-5000}
C=${C:-2}
ROUNDS=${ROUNDS:-3}
TIMEOUT=${TIMEOUT:-5m}
SETTLE=${SETTLE:-2} # seconds for the agent to drain its ring buffer after the load
PROG=/bin/true
MARKER=zt-bench-$$-$(date +%s%N) # + the round: the arg that picks our execs out

loadavg_start=$(cut -d" " -f1-3 /proc/loadavg)
build_tools execload
load() { "$WORK/execload" -n "$N" -c "$C" -path "$PROG" -marker "$1" -timeout "$TIMEOUT" >"$2" || die "execload failed"; }
hz=$(getconf CLK_TCK)

# One round with the agent: start it, run the load, let it drain, read its
# counters and CPU, stop it, count its records for the load.
with_agent() {
	local r=$1
	start_agent exec "$r"
	local cpu0 cpu1
	cpu0=$(cpu_ticks "$AGENT_PID")
	load "$MARKER-$r" "$WORK/load-$r.json"
	sleep "$SETTLE"
	"$BENCHUTIL" metric "$METRICS_URL" zerotel_probe_events_read_total probe=exec >"$WORK/read-$r"
	"$BENCHUTIL" metric "$METRICS_URL" zerotel_probe_events_lost_total probe=exec >"$WORK/lost-$r"
	cpu1=$(cpu_ticks "$AGENT_PID")
	stop_agent
	echo "$cpu0 $cpu1" >"$WORK/cpu-$r"
	"$BENCHUTIL" count-exec -marker "$MARKER-$r" -path "$PROG" "$AGENT_OUT" >"$WORK/count-$r.json"
}

echo "warming up, then $ROUNDS rounds of $N x $PROG (concurrency $C) without and with the agent ..." >&2
"$WORK/execload" -n $((N / 10)) -c "$C" -path "$PROG" >/dev/null
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) -eq 1 ]; then
		load "$MARKER-base-$r" "$WORK/base-$r.json"
		with_agent "$r"
	else
		with_agent "$r"
		load "$MARKER-base-$r" "$WORK/base-$r.json"
	fi
done

# Per round, and totals.
rows=
ratios=()
execs=0 failed=0 records=0 rec_failed=0 exits=0 lines=0 all_exec=0 all_exit=0 read=0 lost=0
cpu_all=0 cpu_load=0 base_n=0 base_s=0 load_s=0
for r in $(seq "$ROUNDS"); do
	L=$WORK/load-$r.json B=$WORK/base-$r.json K=$WORK/count-$r.json
	read -r c0 c1 <"$WORK/cpu-$r"
	n=$(jfield "$L" execs)
	rec=$(jfield "$K" exec_records)
	rd=$(cat "$WORK/read-$r") ls=$(cat "$WORK/lost-$r")
	ratio=$(calc %.3f "$(jfield "$L" execs_per_sec) / $(jfield "$B" execs_per_sec)")
	ratios+=("$ratio")
	rows+="| $r | $(calc %.0f "$(jfield "$B" execs_per_sec)") | $(calc %.0f "$(jfield "$L" execs_per_sec)") | $ratio | $n | $rec | $(jfield "$K" exit_records) | $rd | $ls | $(calc %.2f "($c1 - $c0) / $hz") | $(calc %.1f "($c1 - $c0) * 1e6 / $hz / ($rec > 0 ? $rec : 1)") | $(calc %.1f "($c1 - $c0) * 1e6 / $hz / ($rd > 0 ? $rd : 1)") |"$'\n'
	execs=$((execs + n)) failed=$((failed + $(jfield "$L" failed)))
	records=$((records + rec)) rec_failed=$((rec_failed + $(jfield "$K" exec_failed)))
	exits=$((exits + $(jfield "$K" exit_records))) lines=$((lines + $(jfield "$K" lines)))
	all_exec=$((all_exec + $(jfield "$K" all_exec_records))) all_exit=$((all_exit + $(jfield "$K" all_exit_records)))
	read=$((read + rd)) lost=$((lost + ls))
	cpu_all=$((cpu_all + c1)) cpu_load=$((cpu_load + c1 - c0))
	base_n=$((base_n + $(jfield "$B" execs)))
	base_s=$(calc %.6f "$base_s + $(jfield "$B" seconds)") load_s=$(calc %.6f "$load_s + $(jfield "$L" seconds)")
done
per() { if [ "$2" -gt 0 ]; then calc %.1f "$1 * 1e6 / $hz / $2"; else echo n/a; fi; }

cat <<REPORT

## zerotel trace exec under load ($(uname -r), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ))

$ROUNDS rounds of $N x \`$PROG $MARKER-<round>\`, concurrency $C. Agent: $ZT
Load average (1/5/15 min) at start: $loadavg_start; at end: $(cut -d" " -f1-3 /proc/loadavg) — other work on the host skews the rates.

| round | execs/s without | execs/s with | ratio | processes | exec records | exit records | events read | lost | agent CPU s (load+${SETTLE}s) | agent CPU µs/exec record | agent CPU µs/event read |
|---|---|---|---|---|---|---|---|---|---|---|---|
${rows}
| total | |
|---|---|
| processes spawned with the agent | $execs ($failed failed) |
| exec records for them (path $PROG, marker in args) | $records of $execs expected ($rec_failed with an error) |
| exit records for them | $exits of $execs expected |
| all records the agent printed (host-wide) | $lines ($all_exec exec, $all_exit exit) |
| zerotel_probe_events_read_total{probe="exec"} (summed over rounds) | $read |
| zerotel_probe_events_lost_total{probe="exec"} (summed over rounds) | $lost |
| agent CPU during load + ${SETTLE}s drain | $(calc %.2f "$cpu_load / $hz") s → $(per "$cpu_load" "$records") µs per exec record, $(per "$cpu_load" "$read") µs per event read (exec + exit) |
| agent CPU incl. startup (utime+stime before SIGINT) | $(calc %.2f "$cpu_all / $hz") s → $(per "$cpu_all" "$records") µs per exec record |
| execs/s without / with the agent (all rounds) | $(calc %.0f "$base_n / $base_s") / $(calc %.0f "$execs / $load_s") |
| ratio with/without: all rounds / median of rounds | $(calc %.3f "($execs / $load_s) / ($base_n / $base_s)") / $(median "${ratios[@]}") |
REPORT

if [ "$records" -ne "$execs" ] || [ "$lost" -ne 0 ] || [ "$failed" -ne 0 ]; then
	echo
	echo "note: exec records != processes spawned, events lost, or spawns failed (see above)"
fi
