"""Allocation profiles: uprobes on the Go allocator, by method (go-sampler, span, exact)."""
