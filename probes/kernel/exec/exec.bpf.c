//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Process starts and exits, from tracepoints only (no kprobes: they are not
// available on every kernel, and tracepoints are a stable interface).
//
// An exec is seen in three steps:
//   syscalls:sys_enter_execve(at)  stage path and argv, keyed by thread id
//   sched:sched_process_exec       the exec succeeded: emit it (the thread id
//                                  may have changed to the process id)
//   syscalls:sys_exit_execve(at)   ret < 0: the exec failed, emit it as failed
// and sched:sched_process_exit emits the exit of processes whose exec we saw.
#include "vmlinux.h"
#include "zerotel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define EXEC_PATH_LEN 256  // bytes of the executed path kept
#define EXEC_ARG_LEN 256   // bytes of one argument kept
#define EXEC_ARGS_BUF 4096 // bytes of all arguments, NUL separated
#define EXEC_MAX_ARGS 64   // arguments kept

enum event_kind {
	EVENT_EXEC = 1,
	EVENT_EXIT = 2,
};

struct exec_event {
	enum event_kind kind; // EVENT_EXEC
	__u32 pid;           // process id after the exec
	__u32 tid;           // thread that called execve
	__u32 ppid;
	__u32 uid;
	__s32 retval;        // 0, or -errno for a failed exec
	__u64 start_ns;      // execve entered, CLOCK_BOOTTIME
	__u64 end_ns;        // exec done or failed, CLOCK_BOOTTIME
	__u32 argc;          // arguments captured in args
	__u32 args_len;      // bytes of args used
	__u8 args_truncated; // argv had more than was kept
	__u8 path_truncated;
	__u8 _pad[2];
	char comm[16];
	char path[EXEC_PATH_LEN];
	char args[EXEC_ARGS_BUF];
};

struct exit_event {
	enum event_kind kind; // EVENT_EXIT
	__u32 pid;
	__u32 ppid;
	__u32 exit_code; // wait status: exit code << 8 | terminating signal
	__u64 start_ns;  // when its exec completed, CLOCK_BOOTTIME
	__u64 end_ns;
	char comm[16];
};

// Emit the event types into BTF so bpf2go generates their Go twins.
const struct exit_event *unused_exit_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 21);
} events SEC(".maps");

DECLARE_LOST_COUNTER()

// Execs between syscall entry and result, by thread id. LRU: a thread that
// dies mid-exec cannot leak its slot. An entry is 4.4 KiB (argv), so 1024
// of them (4.5 MiB of kernel memory) bound execs in flight at one time.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct exec_event);
} inflight SEC(".maps");

// Processes whose exec we saw, by pid, to report their exit and lifetime.
// Past 16384 live ones the oldest lose their exit record.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} running SEC(".maps");

// The exec event is larger than the BPF stack: build it here.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_event);
} scratch SEC(".maps");

static __always_inline __u32 current_ppid(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, real_parent, tgid);
}

struct args_reader {
	struct exec_event *e;
	const char *const *argv;
};

// One bpf_loop step: copy argv[i] to the end of e->args. Returns 1 to stop.
// The write offset lives in the event (map memory), not on the stack: the
// verifier then sees it as one bounded unknown and checks this callback once
// instead of once per possible offset.
static long read_arg(__u32 i, struct args_reader *r)
{
	struct exec_event *e = r->e;
	const char *arg = NULL;

	if (bpf_probe_read_user(&arg, sizeof(arg), &r->argv[i]) || !arg)
		return 1;
	__u32 off = e->args_len;
	if (off > EXEC_ARGS_BUF - EXEC_ARG_LEN) {
		e->args_truncated = 1;
		return 1;
	}
	long n = bpf_probe_read_user_str(&e->args[off], EXEC_ARG_LEN, arg);
	if (n <= 0)
		return 1;
	if (n == EXEC_ARG_LEN) {
		// Filled the slot: truncated unless the last byte kept was the end.
		char c = 0;
		bpf_probe_read_user(&c, 1, arg + EXEC_ARG_LEN - 1);
		if (c)
			e->args_truncated = 1;
	}
	e->args_len = off + n;
	e->argc++;
	return 0;
}

static __always_inline void read_args(struct exec_event *e, const char *const *argv)
{
	struct args_reader r = {.e = e, .argv = argv};
	long n = bpf_loop(EXEC_MAX_ARGS, read_arg, &r, 0);
	if (n == EXEC_MAX_ARGS) {
		const char *more = NULL;
		bpf_probe_read_user(&more, sizeof(more), &argv[EXEC_MAX_ARGS]);
		if (more)
			e->args_truncated = 1;
	}
}

static __always_inline int stage_exec(const char *path, const char *const *argv)
{
	__u32 zero = 0;
	struct exec_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;

	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	e->kind = EVENT_EXEC;
	e->pid = id >> 32;
	e->tid = tid;
	e->start_ns = bpf_ktime_get_boot_ns();
	e->end_ns = 0;
	e->retval = 0;
	e->argc = 0;
	e->args_len = 0;
	e->args_truncated = 0;
	e->path_truncated = 0;
	long n = bpf_probe_read_user_str(e->path, sizeof(e->path), path);
	if (n <= 0)
		e->path[0] = 0;
	else if (n == sizeof(e->path))
		e->path_truncated = 1;
	read_args(e, argv);
	bpf_map_update_elem(&inflight, &tid, e, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int zt_exec_enter(struct trace_event_raw_sys_enter *ctx)
{
	return stage_exec((const char *)ctx->args[0], (const char *const *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int zt_execat_enter(struct trace_event_raw_sys_enter *ctx)
{
	return stage_exec((const char *)ctx->args[1], (const char *const *)ctx->args[2]);
}

// Sends the staged event, trimmed to the argument bytes used.
static __always_inline void emit_exec(struct exec_event *e)
{
	e->end_ns = bpf_ktime_get_boot_ns();
	e->ppid = current_ppid();
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__u64 size = offsetof(struct exec_event, args) + (e->args_len & (EXEC_ARGS_BUF - 1));
	if (e->args_len >= EXEC_ARGS_BUF)
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, ringbuf_wakeup_flags(size)))
		count_lost();
}

SEC("tracepoint/sched/sched_process_exec")
int zt_exec_done(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 old_tid = ctx->old_pid;
	struct exec_event *e = bpf_map_lookup_elem(&inflight, &old_tid);
	if (!e)
		return 0; // execve entered before zerotel started
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	e->pid = pid;
	e->retval = 0;
	emit_exec(e);
	__u64 start = e->end_ns;
	bpf_map_update_elem(&running, &pid, &start, BPF_ANY);
	bpf_map_delete_elem(&inflight, &old_tid);
	return 0;
}

static __always_inline int exec_failed(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret >= 0)
		return 0; // success was reported by sched_process_exec
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_event *e = bpf_map_lookup_elem(&inflight, &tid);
	if (!e)
		return 0;
	e->retval = (__s32)ctx->ret;
	emit_exec(e);
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int zt_exec_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exec_failed(ctx);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int zt_execat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exec_failed(ctx);
}

SEC("tracepoint/sched/sched_process_exit")
int zt_proc_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	if ((__u32)id != pid)
		return 0; // a thread, not the process
	__u64 *start = bpf_map_lookup_elem(&running, &pid);
	if (!start)
		return 0;

	struct exit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		bpf_map_delete_elem(&running, &pid);
		return 0;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	e->kind = EVENT_EXIT;
	e->pid = pid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->exit_code = BPF_CORE_READ(task, exit_code);
	e->start_ns = *start;
	e->end_ns = bpf_ktime_get_boot_ns();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
	bpf_map_delete_elem(&running, &pid);
	return 0;
}
