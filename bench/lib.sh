# Shared by bench/tcp_load.sh and bench/exec_load.sh; source it, don't run it.
# Provides: require_root, init_work, build_tools, start_agent, stop_agent, cpu_ticks,
# jfield, calc, median. Sets: ROOT, WORK, ZT, BENCHUTIL, AGENT_PID, AGENT_OUT,
# AGENT_ERR, METRICS_URL.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AGENT_PID=
METRICS_URL=

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

require_root() {
	[ "$(id -u)" -eq 0 ] || die "must run as root: the agent loads eBPF programs (try: sudo $0)"
}

# init_work: creates the work dir $WORK; it is removed on exit (with the
# agent stopped) unless KEEP=1.
init_work() {
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/zerotel-bench.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}
cleanup() {
	if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
		kill -INT "$AGENT_PID" 2>/dev/null || true
		sleep 1
		kill -KILL "$AGENT_PID" 2>/dev/null || true
	fi
	if [ "${KEEP:-0}" = 1 ]; then
		echo "(kept work files in $WORK)" >&2
	else
		rm -rf "$WORK"
	fi
}

# build_tools LOADGEN: builds bin/zerotel (unless ZEROTEL_BIN names a binary
# to use), bench/LOADGEN and bench/benchutil into $WORK.
build_tools() {
	command -v go >/dev/null || die "go not found in PATH"
	if [ -n "${ZEROTEL_BIN:-}" ]; then
		[ -x "$ZEROTEL_BIN" ] && [ -f "$ZEROTEL_BIN" ] || die "ZEROTEL_BIN=$ZEROTEL_BIN is not an executable"
		ZT=$(cd "$(dirname "$ZEROTEL_BIN")" && pwd)/$(basename "$ZEROTEL_BIN")
	fi
	init_work
	cd "$ROOT"
	if [ -z "${ZEROTEL_BIN:-}" ]; then
		echo "building bin/zerotel ..." >&2
		go build -o bin/zerotel ./cmd/zerotel || die "go build ./cmd/zerotel failed (set ZEROTEL_BIN to use a prebuilt agent)"
		ZT=$ROOT/bin/zerotel
	fi
	go build -o "$WORK/$1" "./bench/$1" || die "go build ./bench/$1 failed"
	go build -o "$WORK/benchutil" ./bench/benchutil || die "go build ./bench/benchutil failed"
	BENCHUTIL=$WORK/benchutil
}

# start_agent PROBE TAG: runs `zerotel trace PROBE --output json` with
# metrics on a free loopback port, stdout to $AGENT_OUT ($WORK/agent-TAG.out),
# stderr to $AGENT_ERR, and waits for it to attach.
start_agent() {
	local port
	port=$("$BENCHUTIL" freeport)
	METRICS_URL=http://127.0.0.1:$port/metrics
	AGENT_OUT=$WORK/agent-$2.out
	AGENT_ERR=$WORK/agent-$2.err
	"$ZT" trace "$1" --output json --metrics-addr "127.0.0.1:$port" >"$AGENT_OUT" 2>"$AGENT_ERR" &
	AGENT_PID=$!
	local i
	for i in $(seq 300); do
		if grep -q 'msg=tracing' "$AGENT_ERR" 2>/dev/null; then
			return 0
		fi
		if ! kill -0 "$AGENT_PID" 2>/dev/null; then
			cat "$AGENT_ERR" >&2
			AGENT_PID=
			die "the agent exited before it attached (stderr above)"
		fi
		sleep 0.1
	done
	cat "$AGENT_ERR" >&2
	die "the agent did not log msg=tracing within 30 s"
}

# stop_agent: SIGINT, then wait up to 15 s; dies unless the agent exits 0.
stop_agent() {
	kill -INT "$AGENT_PID"
	local i
	for i in $(seq 150); do
		kill -0 "$AGENT_PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$AGENT_PID" 2>/dev/null; then
		kill -KILL "$AGENT_PID"
		die "the agent did not stop within 15 s of SIGINT"
	fi
	local rc=0
	wait "$AGENT_PID" || rc=$?
	AGENT_PID=
	if [ "$rc" -ne 0 ]; then
		cat "$AGENT_ERR" >&2
		die "the agent exited with status $rc after SIGINT (stderr above)"
	fi
}

# cpu_ticks PID: utime+stime of PID in clock ticks (/proc/PID/stat fields 14+15).
cpu_ticks() {
	# Fields after "comm)" start at field 3 (state): utime is the 12th, stime the 13th.
	sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# jfield FILE KEY: the value of a top-level number, bool or string field of a flat JSON line.
jfield() {
	sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\)\"\{0,1\}[,}].*/\1/p" "$1" | head -1
}

# calc FMT EXPR: floating-point arithmetic, printed with printf FMT.
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# median V...: the median of numbers.
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
