// goprof cpu: the perf_event program run at every cpu-clock tick, on every CPU.
//
// It keeps only the target processes (a map of tgids filled from user space),
// takes the user and kernel stacks (stacks.h: hashed, never colliding), the pprof
// labels and, when asked, the id of the goroutine that ran (golabels.h), and counts
// samples in the kernel, keyed by (pid, tid, user stack, kernel stack, leaf return
// address, labels, goroutine). Nothing is sent to user space per sample. Stacks,
// label sets and counts come in two sets, one per window: user space drains and
// empties one set while samples go to the other, so windows have no gaps and the
// maps never fill over a long run.
//
// A target that execs keeps its pid but runs another program: on_exec (the
// sched_process_exec raw tracepoint) gives it a new generation, which every
// later sample carries in its key, and records the exec for user space, which
// then names those samples from the new image (and gives its Go offsets: until
// then its samples carry no labels).
//
// Map sizes below are placeholders: goprof compiles this once (bcc), caches the
// bytecode, and creates the maps itself with sizes computed from the frequency,
// the drain interval and the CPU count.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

#include "stacks.h"
#include "golabels.h"

// config[] slots, written by user space.
#define CONFIG_WINDOW 0        // which of the two windows (0/1) samples go to
#define CONFIG_WANT_KERNEL 1   // 1: take kernel stacks too
#define CONFIG_WANT_GOID 2     // 1: put the goroutine id in the key
#define CONFIG_FSBASE 3        // offsetof(task_struct, thread.fsbase), from BTF; 0: unknown

// errors[] slots: per-CPU counters, summed by user space at each drain.
#define ERR_SAMPLES 0          // target samples seen (counted or not)
#define ERR_USER_STACKS_FULL 1    // the stack map had no room for a new user stack
#define ERR_KERNEL_STACKS_FULL 2
#define ERR_USER_STACK 3       // no user stack to take (-EFAULT: no user stack, ...)
#define ERR_KERNEL_STACK 4
#define ERR_COUNTS_FULL 5      // the counts map had no room: the sample is lost
#define ERR_LABELS_UNREAD 6    // samples whose goroutine's labels could not be read
#define ERR_LABELS_CAPPED 7    // samples whose labels were cut (golabels.h's caps)
#define ERR_LABELS_FULL 8      // samples whose new label set found the label map full
#define ERR_SLOTS 10

struct sample_key {
    u32 pid;      // tgid
    u32 tid;
    u64 user_stack;    // hash in stacksN (stacks.h); 0: none
    u64 kernel_stack;
    // The word at the user stack pointer. When the sampled function has not set
    // up its frame (Go's frameless leaf functions, any prologue), a frame-pointer
    // walk skips its caller; this is the caller's return address then. User
    // space knows from the symbolizer (pcsp table) whether to use it.
    u64 leaf_ret;
    u64 labels;      // fingerprint of the goroutine's label set in labelsN; 0: none
    u64 goid;        // the goroutine's id when CONFIG_WANT_GOID, else 0
    u32 generation;  // execs of the target seen since it was added (0: the first image)
    u32 pad;
};

struct target_info {
    u32 generation;  // execs seen since the target was added
    u32 pad;
    struct go_info go;   // all zero until user space has read its binary
};

// An exec of a target, as user space reads it: (tgid, its new generation) -> when.
struct exec_key {
    u32 pid;
    u32 generation;
};

BPF_HASH(targets, u32, struct target_info, 64);  // tgid ->
BPF_HASH(execs, struct exec_key, u64, 64);  // -> bpf_ktime_get_ns() of the exec
BPF_ARRAY(config, u32, 4);
BPF_PERCPU_ARRAY(errors, u64, ERR_SLOTS);
// bpf_ktime_get_ns() of this CPU's first target sample: user space learns when sampling
// began without polling a counter for it.
BPF_PERCPU_ARRAY(first_sample, u64, 1);
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
    struct target_info *info = targets.lookup(&tgid);
    if (!info)
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
    slot = CONFIG_WANT_GOID;
    u32 *want_goid = config.lookup(&slot);
    slot = CONFIG_FSBASE;
    u32 *fsbase_offset = config.lookup(&slot);
    if (!window_slot || !want_kernel || !want_goid || !fsbase_offset)
        return 0;
    u32 window = *window_slot & 1;

    struct sample_key key = {};
    key.pid = tgid;
    key.tid = (u32)id;
    key.generation = info->generation;
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

    int status = STACK_OK;
    key.user_stack = take_stack(ctx, window, BPF_F_USER_STACK, &status);
    if (status != STACK_OK)
        count_error(status == STACK_FULL ? ERR_USER_STACKS_FULL : ERR_USER_STACK);
    if (!user_mode && *want_kernel) {
        key.kernel_stack = take_stack(ctx, window, 0, &status);
        if (status != STACK_OK)
            count_error(status == STACK_FULL ? ERR_KERNEL_STACKS_FULL : ERR_KERNEL_STACK);
    }

    // The thread's g, from its thread-local storage: the FS base the kernel keeps for
    // the task, plus the binary's offset (in kernel mode too: the task is the same).
    if (info->go.labels_format != LABELS_NONE && *fsbase_offset) {
        u64 fsbase = 0;
        void *task = (void *)bpf_get_current_task();
        bpf_probe_read_kernel(&fsbase, sizeof(fsbase), task + *fsbase_offset);
        u64 g = fsbase ? read_word(fsbase + (s64)info->go.tls_g) : 0;
        int lstatus = 0;
        key.labels = read_labels(g, &info->go, window, *want_goid, &key.goid, &lstatus);
        if (lstatus & LABELS_UNREAD)
            count_error(ERR_LABELS_UNREAD);
        if (lstatus & LABELS_CAPPED)
            count_error(ERR_LABELS_CAPPED);
        if (lstatus & LABELS_FULL)
            count_error(ERR_LABELS_FULL);
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
    struct target_info *info = targets.lookup(&tgid);
    if (!info)
        return 0;
    u32 next = info->generation + 1;
    info->generation = next;
    info->go.labels_format = LABELS_NONE;   // the new image's offsets are not known yet
    struct exec_key key = {.pid = tgid, .generation = next};
    u64 now = bpf_ktime_get_ns();
    execs.update(&key, &now);  // full (user space away for long): that exec goes unnamed
    return 0;
}
