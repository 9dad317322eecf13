// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Helpers shared by every zerotel BPF program. Include after vmlinux.h.
#ifndef ZEROTEL_H
#define ZEROTEL_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

// Every probe family counts the events it could not hand to user space
// (ring buffer full) in a one-slot per-CPU array named "lost". The Go side
// sums it and exports it as zerotel_events_lost_total{probe="..."}.
#define DECLARE_LOST_COUNTER()                                                 \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                       \
		__uint(max_entries, 1);                                        \
		__type(key, __u32);                                            \
		__type(value, __u64);                                          \
	} lost SEC(".maps");                                                   \
	static __always_inline void count_lost(void)                           \
	{                                                                      \
		__u32 zero = 0;                                                \
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);                  \
		if (n)                                                         \
			*n += 1;                                               \
	}

// bounded(x, mask) is x & mask, kept even where the compiler can prove it
// useless: the verifier may not follow the compiler's proof (a bound checked
// on another register copy), and needs the AND to see the index in range.
#define bounded(x, mask)                                                       \
	({                                                                     \
		__typeof__(x) __v = (x);                                       \
		asm volatile("" : "+r"(__v));                                  \
		__v & (mask);                                                  \
	})

// Ring-buffer wakeups: waking the reader costs more than the event itself
// (measured here: ~10 us of the producing program's time per event). So a
// CPU wakes the reader once it has sent wakeup_bytes since its last wakeup
// (set at load time from the ring's size and the number of CPUs, see
// bpfprobe.Load); the reader also drains the ring every 100 ms (see
// bpfprobe.ReadEvents), which bounds the latency of a quiet ring. The count
// is per CPU: asking the ring how much data waits (bpf_ringbuf_query) reads
// the consumer position that user space writes, a cache miss that cost
// 0.33 us an event here under load.
volatile const __u64 wakeup_bytes = 64 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ringbuf_pending SEC(".maps");

// The flags to send an event of size bytes with.
static __always_inline __u64 ringbuf_wakeup_flags(__u64 size)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&ringbuf_pending, &zero);
	if (!n)
		return BPF_RB_FORCE_WAKEUP;
	*n += size;
	if (*n < wakeup_bytes)
		return BPF_RB_NO_WAKEUP;
	*n = 0;
	return BPF_RB_FORCE_WAKEUP;
}

#endif
