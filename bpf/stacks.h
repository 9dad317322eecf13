// Stacks that never collide, shared by cpu.c and mem.c.
//
// A BPF_STACK_TRACE map hashes a stack to one bucket and drops a second stack that
// lands there (bpf_get_stackid's -EEXIST): the demo lost 4 of 513 samples that way.
// Here the frames are copied with bpf_get_stack into a per-CPU buffer, hashed (64
// bits, over every frame), and kept in an ordinary hash map keyed by that hash: a
// hash map chains, so two stacks only ever share an entry when their 64-bit hashes
// are equal. What can still fail is the map being full (counted by the caller).
//
// Map sizes are placeholders: user space creates the maps with its own sizes.

#define MAX_STACK_DEPTH 127   // kernel.perf_event_max_stack's default
#define EEXIST 17

// Frames, leaf first; bpf_get_stack zeroes what follows the last one. One more
// word than frames (always 0), so that an index masked with MAX_STACK_DEPTH (127)
// stays inside.
struct stack_trace {
    u64 ips[MAX_STACK_DEPTH + 1];
};

BPF_PERCPU_ARRAY(stack_scratch, struct stack_trace, 1);
// One per window: stack hash -> frames.
BPF_HASH(stacks0, u64, struct stack_trace, 1024);
BPF_HASH(stacks1, u64, struct stack_trace, 1024);

// What take_stack says besides the hash.
#define STACK_OK 0
#define STACK_NONE 1   // no stack to take (-EFAULT: no user stack, ...)
#define STACK_FULL 2   // the window's stack map had no room

// One step of the frames' hash: a multiply-xorshift mix of each word.
static __always_inline u64 mix_word(u64 h, u64 word) {
    h ^= word;
    h *= 0x9e3779b97f4a7c15ULL;
    h ^= h >> 32;
    return h;
}

// The hash of the current user (BPF_F_USER_STACK) or kernel (0) stack, its frames
// stored in the window's stack map if not there yet; 0 with *status set when it
// could not be taken or kept.
static __always_inline u64 take_stack(void *ctx, u32 window, u64 flags, int *status) {
    int zero = 0;
    struct stack_trace *st = stack_scratch.lookup(&zero);
    if (!st) {
        *status = STACK_NONE;
        return 0;
    }
    long bytes = bpf_get_stack(ctx, st->ips, MAX_STACK_DEPTH * 8, flags);
    if (bytes <= 0) {
        *status = STACK_NONE;
        return 0;
    }
    u64 h = 0xcbf29ce484222325ULL ^ (u64)bytes;
    int n = bytes / 8;
    for (int i = 0; i < MAX_STACK_DEPTH; i++) {
        if (i >= n)
            break;
        // The mask keeps the read inside the buffer for the verifier, which does not
        // follow the bound through clang's loop; the empty asm keeps clang from
        // proving the mask useless and dropping it.
        int j = i;
        asm volatile("" : "+r"(j));
        h = mix_word(h, st->ips[j & MAX_STACK_DEPTH]);
    }
    if (h == 0)
        h = 1;   // 0 means "no stack" in a sample's key
    struct stack_trace *kept = window ? stacks1.lookup(&h) : stacks0.lookup(&h);
    if (!kept) {
        int err = window ? stacks1.insert(&h, st) : stacks0.insert(&h, st);
        if (err && err != -EEXIST) {   // -EEXIST: another CPU stored it meanwhile
            *status = STACK_FULL;
            return 0;
        }
    }
    *status = STACK_OK;
    return h;
}
