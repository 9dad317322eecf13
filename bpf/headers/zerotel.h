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

#endif
