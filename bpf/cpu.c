// goprof cpu: the perf_event program run at every cpu-clock tick, on every CPU.
//
// It keeps only the target processes (a map of tgids filled from user space),
// takes the user and kernel stacks into a STACK_TRACE map and counts samples in
// the kernel, keyed by (pid, tid, user stack, kernel stack, leaf return address).
// Nothing is sent to user space per sample. Stacks and counts come in two sets,
// one per window: user space drains and empties one set while samples go to the
// other, so windows have no gaps and the maps never fill over a long run.
//
// A target that execs keeps its pid but runs another program: on_exec (the
// sched_process_exec raw tracepoint) gives it a new generation, which every
// later sample carries in its key, and records the exec for user space, which
// then names those samples from the new image.
//
// Map sizes below are placeholders: goprof compiles this once (bcc), caches the
// bytecode, and creates the maps itself with sizes computed from the frequency,
// the drain interval and the CPU count.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

// config[] slots, written by user space.
#define CONFIG_WINDOW 0        // which of the two windows (0/1) samples go to
#define CONFIG_WANT_KERNEL 1   // 1: take kernel stacks too

// errors[] slots: per-CPU counters, summed by user space at each drain.
#define ERR_SAMPLES 0          // target samples seen (counted or not)
#define ERR_USER_COLLISION 1   // bpf_get_stackid -EEXIST: bucket taken by another stack
#define ERR_KERNEL_COLLISION 2
#define ERR_USER_STACK 3       // any other user stack failure (-EFAULT: no user stack, ...)
#define ERR_KERNEL_STACK 4
#define ERR_COUNTS_FULL 5      // the counts map had no room: the sample is lost
#define ERR_SLOTS 8

#define EEXIST 17

struct sample_key {
    u32 pid;      // tgid
    u32 tid;
    s32 user_stack;
    s32 kernel_stack;
    // The word at the user stack pointer. When the sampled function has not set
    // up its frame (Go's frameless leaf functions, any prologue), a frame-pointer
    // walk skips its caller; this is the caller's return address then. User
    // space knows from the symbolizer (pcsp table) whether to use it.
    u64 leaf_ret;
    u32 generation;  // execs of the target seen since it was added (0: the first image)
    u32 pad;
};

// An exec of a target, as user space reads it: (tgid, its new generation) -> when.
struct exec_key {
    u32 pid;
    u32 generation;
};

BPF_HASH(targets, u32, u32, 64);  // tgid -> generation
BPF_HASH(execs, struct exec_key, u64, 64);  // -> bpf_ktime_get_ns() of the exec
BPF_ARRAY(config, u32, 4);
BPF_PERCPU_ARRAY(errors, u64, ERR_SLOTS);
// bpf_ktime_get_ns() of this CPU's first target sample: user space learns when sampling
// began without polling a counter for it.
BPF_PERCPU_ARRAY(first_sample, u64, 1);
BPF_STACK_TRACE(stacks0, 1024);
BPF_STACK_TRACE(stacks1, 1024);
BPF_HASH(counts0, struct sample_key, u64, 1024);
BPF_HASH(counts1, struct sample_key, u64, 1024);

static inline void count_error(int slot) {
    u64 *n = errors.lookup(&slot);
    if (n)
        (*n)++;
}

int on_cpu_sample(struct bpf_perf_event_data *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 *generation = targets.lookup(&tgid);
    if (!generation)
        return 0;
    count_error(ERR_SAMPLES);
    int first_slot = 0;
    u64 *first = first_sample.lookup(&first_slot);
    if (first && *first == 0)
        *first = bpf_ktime_get_ns();

    int slot = CONFIG_WINDOW;
    u32 *window_slot = config.lookup(&slot);
    slot = CONFIG_WANT_KERNEL;
    u32 *want_kernel = config.lookup(&slot);
    if (!window_slot || !want_kernel)
        return 0;
    u32 window = *window_slot & 1;

    struct sample_key key = {};
    key.pid = tgid;
    key.tid = (u32)id;
    key.generation = *generation;
    key.kernel_stack = -1;
    int user_mode = (ctx->regs.cs & 3) == 3;
    u64 user_sp = ctx->regs.sp;
    if (!user_mode) {
        // Interrupted in the kernel on this thread's behalf: its user registers are
        // the ones saved on entry to the kernel.
        struct pt_regs *uregs =
            (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
        user_sp = 0;
        if (uregs)
            bpf_probe_read_kernel(&user_sp, sizeof(user_sp), &uregs->sp);
    }
    if (user_sp)
        bpf_probe_read_user(&key.leaf_ret, sizeof(key.leaf_ret), (void *)user_sp);

    key.user_stack = window ? stacks1.get_stackid(ctx, BPF_F_USER_STACK)
                            : stacks0.get_stackid(ctx, BPF_F_USER_STACK);
    if (key.user_stack < 0)
        count_error(key.user_stack == -EEXIST ? ERR_USER_COLLISION : ERR_USER_STACK);
    if (!user_mode && *want_kernel) {
        key.kernel_stack = window ? stacks1.get_stackid(ctx, 0) : stacks0.get_stackid(ctx, 0);
        if (key.kernel_stack < 0)
            count_error(key.kernel_stack == -EEXIST ? ERR_KERNEL_COLLISION : ERR_KERNEL_STACK);
    }

    u64 *count = window ? counts1.lookup(&key) : counts0.lookup(&key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return 0;
    }
    u64 one = 1;
    int err = window ? counts1.insert(&key, &one) : counts0.insert(&key, &one);
    if (err == 0)
        return 0;
    // Another CPU may have inserted the same key meanwhile; else the map is full.
    count = window ? counts1.lookup(&key) : counts0.lookup(&key);
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        count_error(ERR_COUNTS_FULL);
    return 0;
}

// sched_process_exec(task, old_pid, bprm), run by the task that exec'd once its new
// image is in place: after de_thread() it is the thread group leader, so the tgid
// is the target's pid even when another thread called exec.
int on_exec(struct bpf_raw_tracepoint_args *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 *generation = targets.lookup(&tgid);
    if (!generation)
        return 0;
    u32 next = *generation + 1;
    *generation = next;
    struct exec_key key = {.pid = tgid, .generation = next};
    u64 now = bpf_ktime_get_ns();
    execs.update(&key, &now);  // full (user space away for long): that exec goes unnamed
    return 0;
}
