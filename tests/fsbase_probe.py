"""Ground truth for the tests of goprof.bpf.btf and goprof.golang.tls: the FS base of each
thread of a process as the kernel holds it, read by a BPF program at
`bpf_get_current_task() + OFFSET` exactly as goprof's will, and optionally the word at
`fsbase + G_OFFSET` read from user memory at the same moment (Go's g).

Run as a helper process (`python tests/fsbase_probe.py --pid PID --offset N`) so the test's
own process does not load bcc: it compiles and attaches, prints "ready", records until a
line (or EOF) arrives on stdin, then prints one JSON object
{"fsbase": {tid: fsbase}, "g": {tid: g}, "events": {tid: n}, "matches": {tid: n},
"starting": {tid: n}} and exits. With --g-m and --m-procid, each event also follows g.m
to m.procid, as a label reader would, and counts the events where it is the thread's id
(matches) or g or m.procid is still 0 (starting: a new thread before the runtime set it).

Events: the raw sys_enter tracepoint (every system call of the process's threads; needs
no tracefs) and/or a cpu-clock perf event (threads that run without system calls).
"""

from __future__ import annotations

import argparse
import json
import sys

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

BPF_HASH(fsbases, u32, u64, 4096);
BPF_HASH(gs, u32, u64, 4096);
BPF_HASH(events, u32, u64, 4096);
BPF_HASH(matches, u32, u64, 4096);
BPF_HASH(starting, u32, u64, 4096);

static __always_inline void record(void) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TGID)
        return;
    u32 tid = (u32)id;
    u64 fsbase = 0;
    char *task = (char *)bpf_get_current_task();
    if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), task + FSBASE_OFFSET) != 0)
        return;
    fsbases.update(&tid, &fsbase);
#ifdef G_OFFSET
    u64 g = 0;
    if (fsbase && bpf_probe_read_user(&g, sizeof(g), (void *)(fsbase + G_OFFSET)) == 0)
        gs.update(&tid, &g);
#ifdef G_M
    // What a label reader does next: g.m, and that m's thread id (m.procid) must be
    // this thread's.
    // A new thread runs a little before the runtime has stored g in its TLS (Go's clone
    // asks the kernel for its tid first) or set m.procid: "starting".
    u64 m = 0, procid = ~0ULL;
    events.increment(tid);
    if (g && bpf_probe_read_user(&m, sizeof(m), (void *)(g + G_M)) == 0 && m)
        bpf_probe_read_user(&procid, sizeof(procid), (void *)(m + M_PROCID));
    if (procid == tid)
        matches.increment(tid);
    else if (g == 0 || (m && procid == 0))
        starting.increment(tid);
#endif
#endif
}

RAW_TRACEPOINT_PROBE(sys_enter) {
    record();
    return 0;
}

int on_sample(struct bpf_perf_event_data *ctx) {
    record();
    return 0;
}
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, help="the process (tgid) to watch")
    ap.add_argument("--offset", type=int, required=True, help="task_struct -> fsbase")
    ap.add_argument("--g-offset", type=int, help="also read the word at fsbase + this")
    ap.add_argument("--g-m", type=int, help="g.m; with --m-procid: check g.m.procid == tid")
    ap.add_argument("--m-procid", type=int, help="m.procid (the thread id of an m)")
    ap.add_argument("--events", choices=("syscalls", "samples", "both"), default="syscalls")
    args = ap.parse_args(argv)

    from bcc import BPF, PerfSWConfig, PerfType

    cflags = [f"-DTGID={args.pid}", f"-DFSBASE_OFFSET={args.offset}"]
    if args.g_offset is not None:
        cflags.append(f"-DG_OFFSET={args.g_offset}")
    if args.g_m is not None and args.m_procid is not None:
        cflags += [f"-DG_M={args.g_m}", f"-DM_PROCID={args.m_procid}"]
    bpf = BPF(text=PROGRAM, cflags=cflags)
    if args.events in ("samples", "both"):
        bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK,
                              fn_name=b"on_sample", sample_freq=997)
    if args.events == "samples":  # RAW_TRACEPOINT_PROBE attached itself at load
        bpf.detach_raw_tracepoint(b"sys_enter")
    print("ready", flush=True)
    sys.stdin.readline()
    # Detach before reading, so the counts read are of one finished set of events.
    if args.events in ("samples", "both"):
        bpf.detach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK)
    if args.events != "samples":
        bpf.detach_raw_tracepoint(b"sys_enter")
    fsbases = {k.value: v.value for k, v in bpf[b"fsbases"].items()}
    out = {"fsbase": fsbases}
    for name in ("g", "events", "matches", "starting"):
        table = bpf[b"gs" if name == "g" else name.encode()]
        out[name] = {k.value: v.value for k, v in table.items()}
    bpf.cleanup()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
