"""What a goroutine's atomicstatus and waitreason mean, as Go's traceback prints them
(runtime/traceback.go goroutineheader, runtime2.go), per Go version."""

from __future__ import annotations

G_IDLE, G_RUNNABLE, G_RUNNING, G_SYSCALL, G_WAITING = 0, 1, 2, 3, 4
G_DEAD, G_COPYSTACK, G_PREEMPTED, G_LEAKED, G_DEADEXTRA = 6, 8, 9, 10, 11
G_SCAN = 0x1000

# gStatusStrings (runtime/traceback.go, Go 1.26 and 1.27).
STATUS_STRINGS = {
    G_IDLE: "idle", G_RUNNABLE: "runnable", G_RUNNING: "running", G_SYSCALL: "syscall",
    G_WAITING: "waiting", G_DEAD: "dead", G_COPYSTACK: "copystack", G_LEAKED: "leaked",
    G_PREEMPTED: "preempted", G_DEADEXTRA: "waiting for cgo callback",
}

# waitReasonStrings indexed by the waitReason constant, from runtime2.go of the Go 1.26.8
# and 1.27.3 toolchains (identical in both: the constants' order differs from the
# strings' literal order, so the table is by value, generated from both files).
_WAIT_REASONS_126 = (
    "", "GC assist marking", "IO wait", "dumping heap", "garbage collection",
    "garbage collection scan", "panicwait", "GC assist wait", "GC sweep wait",
    "GC scavenge wait", "finalizer wait", "force gc (idle)", "GOMAXPROCS updater (idle)",
    "semacquire", "sleep", "chan receive (nil chan)", "chan send (nil chan)",
    "select (no cases)", "select", "chan receive", "chan send", "sync.Cond.Wait",
    "sync.Mutex.Lock", "sync.RWMutex.RLock", "sync.RWMutex.Lock", "sync.WaitGroup.Wait",
    "trace reader (blocked)", "wait for GC cycle", "GC worker (idle)", "GC worker (active)",
    "preempted", "debug call", "GC mark termination", "stopping the world",
    "flushing proc caches", "trace goroutine status", "trace proc status",
    "page trace flush", "coroutine", "GC weak to strong wait", "synctest.Run",
    "synctest.Wait", "chan receive (durable)", "chan send (durable)", "select (durable)",
    "sync.WaitGroup.Wait (durable)", "cleanup wait",
)
# Go 1.19.8's (Debian's golang-1.19 source): a sync.Mutex wait is "semacquire" there.
_WAIT_REASONS_119 = (
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)",
    "dumping heap", "garbage collection", "garbage collection scan", "panicwait", "select",
    "select (no cases)", "GC assist wait", "GC sweep wait", "GC scavenge wait",
    "chan receive", "chan send", "finalizer wait", "force gc (idle)", "semacquire", "sleep",
    "sync.Cond.Wait", "timer goroutine (idle)", "trace reader (blocked)",
    "wait for GC cycle", "GC worker (idle)", "preempted", "debug call",
)
WAIT_REASONS: dict[int, tuple[str, ...]] = {19: _WAIT_REASONS_119, 26: _WAIT_REASONS_126,
                                            27: _WAIT_REASONS_126}


def wait_reasons(minor: int | None) -> tuple[str, ...] | None:
    """The wait reason strings of a Go minor version; None where goprof has no table."""
    return WAIT_REASONS.get(minor) if minor is not None else None


def state_of(status: int, reason: int, reasons: tuple[str, ...] | None) -> str:
    """The state Go prints in "goroutine N [state]": the wait reason of a waiting (or
    leaked) goroutine, else its status (scan bit dropped)."""
    base = status & ~G_SCAN
    state = STATUS_STRINGS.get(base, "???")
    if base in (G_WAITING, G_LEAKED) and reason != 0:
        if reasons is None:
            state = f"wait reason {reason}"
        else:
            state = reasons[reason] if reason < len(reasons) else "unknown wait reason"
    return state


def is_system(start_function: str, base_status: int) -> bool:
    """runtime.isSystemGoroutine: goroutines started in the runtime (not runtime.main),
    which runtime/pprof and runtime.Stack leave out. The finalizer and cleanup goroutines
    count as user goroutines while they run user code: here, while not parked."""
    if start_function in ("runtime.main", "runtime.corostart", "runtime.handleAsyncEvent"):
        return False
    if start_function in ("runtime.runFinalizers", "runtime.runfinq", "runtime.runCleanups"):
        return base_status == G_WAITING
    return start_function.startswith("runtime.")
