// goprof mem: uprobe programs on the Go runtime's allocation paths.
//
// Every probe sits on the conditional jump right after a function's stack-bound
// check (emulated by the kernel, ~0.8 us a hit; the function's first instruction
// is single-stepped, ~12 us). Argument registers still hold the Go arguments
// there (ABIInternal: AX, BX, CX, ...). When the jump is about to be taken, the
// goroutine's stack grows and the function starts over, so the probe would fire
// twice: such hits are skipped (counted).
//
// One program per method (user space attaches only the method's programs):
//   on_sampled_alloc  runtime.profilealloc(mp, x, size): Go's own heap sampler
//                     picked this allocation; CX is the slot size.
//   on_malloc         runtime.mallocgc(size, typ, needzero) and Go 1.27's
//                     size-specialized entry points: every allocation; AX = size.
//   on_refill         runtime.(*mcache).refill(c, spc): a span is retired; it
//   on_alloc_large    and (*mcache).allocLarge(c, size) stand for the bytes
//                     handed out since; a stack is taken only when a per-CPU
//                     byte counter crosses an exponentially drawn threshold.
//
// A target that execs runs another binary under the same pid: on_exec (the
// sched_process_exec raw tracepoint) gives it a new generation, carried by every
// later event's key, and sets it aside (not ready) until user space has read the
// new image and given its offsets: offsets of the old Go version must not be
// applied to the new one.
//
// Allocations are counted in the kernel by (pid, user stack, word at the stack
// pointer, size, labels, goroutine), in two window sets as in cpu.c. Stacks are
// hashed (stacks.h); labels are the allocating goroutine's (golabels.h: R14 holds
// g at every probe, which sits in Go code). Map sizes below are
// placeholders: user space creates the maps with its own sizes.

#include <uapi/linux/ptrace.h>

#include "stacks.h"
#include "golabels.h"

#define CONFIG_WINDOW 0   // which of the two windows (0/1) counts go to
#define CONFIG_WANT_GOID 2   // 1: put the goroutine id in the key

// errors[] slots: per-CPU counters, summed by user space.
#define ERR_HITS 0            // probe hits in target processes
#define ERR_STACKS_FULL 1     // the stack map had no room for a new stack
#define ERR_STACK 2           // no stack to take
#define ERR_COUNTS_FULL 3     // the counts map had no room: the event is lost
#define ERR_MORESTACK 4       // hits skipped: the stack grows and the function restarts
#define ERR_READ 5            // runtime structures that could not be read (span method)
#define ERR_EXEC_PENDING 6    // hits in a target that exec'd, before user space re-read it
#define ERR_LABELS_UNREAD 7   // events whose goroutine's labels could not be read
#define ERR_LABELS_CAPPED 8   // events whose labels were cut (golabels.h's caps)
#define ERR_SAMPLED 9         // events counted with a stack
#define ERR_LABELS_FULL 10    // events whose new label set found the label map full
#define ERR_SLOTS 16
#define THRESHOLDS 1024       // size of the table of exponential draws
#define PAGE_SHIFT_GO 13      // Go's heap pages are 8 KiB
#define FLAGS_CF_ZF 0x41      // JBE is taken when CF or ZF is set

// What the span programs must know of a target's runtime: struct offsets of its
// Go version (from DWARF or goprof's table), per process. In every Go version
// goprof knows (1.19-1.27) mspan has allocCount, 4 bytes, allocCountBeforeCache,
// elemsize in a row: one 16-byte read at allocCount gets all three (user space
// checks the layout).
struct target_info {
    u32 mcache_alloc;         // offsetof(mcache, alloc): [numSpanClasses]*mspan
    u32 span_alloc_count;     // offsetof(mspan, allocCount), uint16
    u32 generation;           // execs seen since the target was added
    u32 ready;                // 0 from an exec until user space gives the new offsets
    struct go_info go;        // labels: offsets of its Go version (tls_g unused: R14 is g)
};

// Span method, per CPU: one lookup a hit (these programs run ~100k times a second
// in an allocation-bound program).
struct span_state {
    s64 until_sample;         // bytes left before the next stack
    u64 bytes;                // every byte handed out (exact total)
    u64 objects;              // every object handed out
    u64 events;               // refills and large objects seen
};

struct alloc_key {
    u32 pid;
    u32 pad0;
    u64 user_stack;           // hash in stacksN (stacks.h); 0: none
    // The word at the stack pointer: the probed function has not pushed its frame
    // yet, so the frame-pointer walk skips its caller; this is its return address.
    u64 leaf_ret;
    u64 size;                 // sampled/exact: object size; span: bytes of the event
    u64 labels;               // fingerprint of the goroutine's label set in labelsN; 0: none
    u64 goid;                 // the goroutine's id when CONFIG_WANT_GOID, else 0
    u32 generation;           // the target's generation (see on_exec)
    u32 pad;
};

// An exec of a target, as user space reads it: (tgid, its new generation) -> when.
struct exec_key {
    u32 pid;
    u32 generation;
};

struct alloc_value {
    u64 events;
    u64 objects;
    u64 bytes;
};

BPF_HASH(targets, u32, struct target_info, 64);
BPF_HASH(execs, struct exec_key, u64, 64);  // -> bpf_ktime_get_ns() of the exec
BPF_ARRAY(config, u32, 4);
BPF_PERCPU_ARRAY(errors, u64, ERR_SLOTS);
BPF_ARRAY(thresholds, u64, THRESHOLDS);   // exponential draws in bytes, from user space
BPF_PERCPU_ARRAY(span_states, struct span_state, 1);
BPF_HASH(counts0, struct alloc_key, struct alloc_value, 1024);
BPF_HASH(counts1, struct alloc_key, struct alloc_value, 1024);

static inline void count_error(int slot, u64 n) {
    u64 *v = errors.lookup(&slot);
    if (v)
        *v += n;
}

// The tgid when the hit is in a target and will not restart; else 0.
static inline u32 target_hit(struct pt_regs *ctx, struct target_info **info) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    *info = targets.lookup(&tgid);
    if (!*info)
        return 0;
    if (!(*info)->ready) {
        count_error(ERR_EXEC_PENDING, 1);
        return 0;
    }
    if (ctx->flags & FLAGS_CF_ZF) {
        count_error(ERR_MORESTACK, 1);
        return 0;
    }
    count_error(ERR_HITS, 1);
    return tgid;
}

static inline void add_value(struct alloc_value *v, u64 objects, u64 bytes) {
    __sync_fetch_and_add(&v->events, 1);
    __sync_fetch_and_add(&v->objects, objects);
    __sync_fetch_and_add(&v->bytes, bytes);
}

static inline void record(struct pt_regs *ctx, u32 pid, struct target_info *info, u64 size,
                          u64 objects, u64 bytes) {
    int slot = CONFIG_WINDOW;
    u32 *window_slot = config.lookup(&slot);
    slot = CONFIG_WANT_GOID;
    u32 *want_goid = config.lookup(&slot);
    if (!window_slot || !want_goid)
        return;
    u32 window = *window_slot & 1;

    struct alloc_key key = {};
    key.pid = pid;
    key.generation = info->generation;
    key.size = size;
    bpf_probe_read_user(&key.leaf_ret, sizeof(key.leaf_ret), (void *)ctx->sp);
    int status = STACK_OK;
    key.user_stack = take_stack(ctx, window, BPF_F_USER_STACK, &status);
    if (status != STACK_OK)
        count_error(status == STACK_FULL ? ERR_STACKS_FULL : ERR_STACK, 1);
    count_error(ERR_SAMPLED, 1);
    int lstatus = 0;
    key.labels = read_labels(ctx->r14, &info->go, window, *want_goid, &key.goid, &lstatus);
    if (lstatus & LABELS_UNREAD)
        count_error(ERR_LABELS_UNREAD, 1);
    if (lstatus & LABELS_CAPPED)
        count_error(ERR_LABELS_CAPPED, 1);
    if (lstatus & LABELS_FULL)
        count_error(ERR_LABELS_FULL, 1);

    struct alloc_value *v = window ? counts1.lookup(&key) : counts0.lookup(&key);
    if (v) {
        add_value(v, objects, bytes);
        return;
    }
    struct alloc_value first = {1, objects, bytes};
    int err = window ? counts1.insert(&key, &first) : counts0.insert(&key, &first);
    if (err == 0)
        return;
    // Another CPU may have inserted the same key meanwhile; else the map is full.
    v = window ? counts1.lookup(&key) : counts0.lookup(&key);
    if (v)
        add_value(v, objects, bytes);
    else
        count_error(ERR_COUNTS_FULL, 1);
}

static inline s64 draw_threshold(void) {
    int i = bpf_get_prandom_u32() & (THRESHOLDS - 1);
    u64 *t = thresholds.lookup(&i);
    return t && *t ? (s64)*t : 1;
}

// Span method: every event is added to the exact totals; a stack is taken when
// the bytes since the last one cross a fresh exponential threshold, as Go's own
// sampler does per allocation (so P(sampled) = 1 - exp(-bytes/rate)).
static inline void span_event(struct pt_regs *ctx, u32 pid, struct target_info *info,
                              u64 bytes, u64 objects) {
    int zero = 0;
    struct span_state *st = span_states.lookup(&zero);
    if (!st)
        return;
    st->bytes += bytes;
    st->objects += objects;
    st->events++;
    s64 l = st->until_sample;
    if (l == 0)
        l = draw_threshold();   // this CPU's first event
    l -= (s64)bytes;
    if (l > 0) {
        st->until_sample = l;
        return;
    }
    st->until_sample = draw_threshold();
    record(ctx, pid, info, bytes, objects, bytes);
}

int on_sampled_alloc(struct pt_regs *ctx) {
    struct target_info *info;
    u32 pid = target_hit(ctx, &info);
    if (!pid)
        return 0;
    u64 size = ctx->cx;
    record(ctx, pid, info, size, 1, size);
    return 0;
}

int on_malloc(struct pt_regs *ctx) {
    struct target_info *info;
    u32 pid = target_hit(ctx, &info);
    if (!pid)
        return 0;
    u64 size = ctx->ax;
    record(ctx, pid, info, size, 1, size);
    return 0;
}

int on_refill(struct pt_regs *ctx) {
    struct target_info *info;
    u32 pid = target_hit(ctx, &info);
    if (!pid)
        return 0;
    // The span being retired: c.alloc[spc]. Its allocCount minus
    // allocCountBeforeCache is what it handed out since it was cached.
    u64 c = ctx->ax;
    u64 spc = ctx->bx & 0xff;
    u64 span = 0;
    u64 fields[2] = {};   // allocCount (u16), 4 bytes, allocCountBeforeCache (u16), elemsize
    if (bpf_probe_read_user(&span, sizeof(span), (void *)(c + info->mcache_alloc + spc * 8)) ||
        !span ||
        bpf_probe_read_user(fields, sizeof(fields), (void *)(span + info->span_alloc_count))) {
        count_error(ERR_READ, 1);
        return 0;
    }
    u16 alloc_count = fields[0] & 0xffff;
    u16 before = fields[0] >> 48;
    u64 elemsize = fields[1];
    if (alloc_count <= before)
        return 0;   // the empty placeholder span, or nothing handed out
    u64 objects = alloc_count - before;
    span_event(ctx, pid, info, objects * elemsize, objects);
    return 0;
}

int on_alloc_large(struct pt_regs *ctx) {
    struct target_info *info;
    u32 pid = target_hit(ctx, &info);
    if (!pid)
        return 0;
    // A large object gets whole 8 KiB pages.
    u64 size = ctx->bx;
    u64 pages = (size + (1 << PAGE_SHIFT_GO) - 1) >> PAGE_SHIFT_GO;
    span_event(ctx, pid, info, pages << PAGE_SHIFT_GO, 1);
    return 0;
}

// sched_process_exec: as in cpu.c, and the target waits (not ready) for its new
// image's offsets.
int on_exec(struct bpf_raw_tracepoint_args *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct target_info *info = targets.lookup(&tgid);
    if (!info)
        return 0;
    u32 next = info->generation + 1;
    info->generation = next;
    info->ready = 0;
    struct exec_key key = {.pid = tgid, .generation = next};
    u64 now = bpf_ktime_get_ns();
    execs.update(&key, &now);
    return 0;
}
