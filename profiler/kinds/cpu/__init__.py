"""CPU profiles: perf_event cpu-clock samples, stacks counted in the kernel."""
