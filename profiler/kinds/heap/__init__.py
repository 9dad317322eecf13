"""In-use heap profiles: one read of the runtime's own memory-profile buckets."""
