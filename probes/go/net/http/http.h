// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The http family's event, in-flight state, load-time constants, maps and
// the helpers that fill and send events. Included by http.bpf.c only.
#ifndef ZEROTEL_HTTP_H
#define ZEROTEL_HTTP_H

#define METHOD_LEN 16
#define PATH_LEN 256 // the longest string field
#define ROUTE_LEN 128
#define HOST_LEN 128
#define QUERY_LEN 128
#define ADDR_LEN 64
#define UA_LEN 128
#define HDR_MAX 2048 // request header bytes searched for traceparent / user-agent
#define HEAD_LEN 256 // read first: is it a request (and most requests whole)

// x86-64 syscall numbers and socket flags (not in vmlinux.h: macros).
#define __NR_read 0
#define __NR_recvfrom 45
#define MSG_PEEK 2

// The event's string fields, in data (see struct http_event).
enum http_str {
	STR_METHOD,
	STR_SCHEME,     // client
	STR_HOST,       // server: Host header; client: URL host
	STR_PATH,
	STR_QUERY,      // client: raw query
	STR_ROUTE,      // server: the ServeMux pattern
	STR_PEER,       // server: RemoteAddr
	STR_USER_AGENT, // server: up to UA_LEN bytes of the header line's rest
	STR_COUNT,
};

#define DATA_MAX 1024

enum http_kind {
	HTTP_SERVER = 1,
	HTTP_CLIENT = 2,
	HTTP_PROCESS_EXIT = 3, // a traced process exited: sweep its map entries
	HTTP_NEED_START = 4,   // a request had no start (TLS): attach readTransfer
};

struct http_event {
	enum http_kind kind;
	__u32 pid;
	__u64 goid;
	__u64 start_ns;
	__u64 end_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_span_id[8]; // all zero: a root span
	__u8 sampled;
	__u8 parent_remote;     // parent came in a traceparent header
	__u8 proto_major;
	__u8 proto_minor;
	__u8 tls;
	__u8 no_response; // client: the call failed before a response
	__u16 status;
	// Strings are packed back to back in data, and the event is sent only
	// up to data_len: a request's strings are usually a few dozen bytes,
	// and ring-buffer bytes are cache misses (measured: ~1.2 us for a
	// fixed 950-byte event, per request).
	__u16 str_off[STR_COUNT];
	__u16 str_len[STR_COUNT];
	__u16 data_len;
	__u8 _pad2[6];
	char data[DATA_MAX + PATH_LEN]; // slack: the last string may start near DATA_MAX
};

const struct http_event *unused_http_event __attribute__((unused));
const enum http_str *unused_http_str __attribute__((unused));

// A server request between its start and end: only what the start knows,
// so the per-request map update copies little.
// The request line and headers come from the raw request bytes that start
// it (read() or the connection's buffer), so the end reads no user memory
// for them (a user-memory read costs ~0.1 us here).
#define LINE_LEN 256    // of the request line: method, a space, the target
#define REQ_HOST_LEN 64 // of the Host header line's rest

struct server_req {
	__u64 start_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_span_id[8];
	__u8 sampled;
	__u8 parent_remote;
	__u8 method_len;  // in line; 0: the request line was not understood
	__u8 proto_minor; // HTTP/1.x
	__u16 target_len; // in line, after the method and a space
	__u8 _pad[2];
	char line[LINE_LEN];
	char host[REQ_HOST_LEN];
	char user_agent[UA_LEN];
};

// Field offsets and probe placement of the traced binary, set at load time
// from its DWARF or zerotel's offsets table (see fields.go).
volatile const __u64 off_g_goid;
volatile const __u64 off_g_parent_goid;
volatile const __u64 off_req_method;
volatile const __u64 off_req_url;
volatile const __u64 off_req_remote_addr;
volatile const __u64 off_req_pattern;
volatile const __u64 off_req_tls;
volatile const __u64 off_url_scheme;
volatile const __u64 off_url_host;
volatile const __u64 off_url_path;
volatile const __u64 off_url_raw_query;
volatile const __u64 off_rw_req;
volatile const __u64 off_rw_status;
volatile const __u64 off_bufio_buf;
volatile const __u64 off_bufio_r;
volatile const bool has_pattern;       // Request.Pattern exists (Go >= 1.23)
volatile const bool jump_read_transfer; // probe sits on the stack-check JBE
volatile const bool jump_finish_request;
volatile const bool jump_round_trip;
volatile const bool jump_read_response;
volatile const bool jump_url_error_op;
// The traced executable, so processes that start it later are watched too
// (0: only the pids user space puts in traced).
volatile const __u64 target_ino;
volatile const __u32 target_dev;

// Sampling, decided here so unsampled requests cost no span work:
// root spans are sampled when the trace id (bytes 8..16, big endian, >> 1)
// is below sample_bound, as OpenTelemetry's TraceIDRatioBased does;
// with parent_based an incoming traceparent's sampled flag wins.
volatile const __u64 sample_bound = 0xffffffffffffffffULL;
volatile const bool parent_based = true;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // small enough to stay in cache
} events SEC(".maps");

DECLARE_LOST_COUNTER()

struct go_key {
	__u32 pid;
	__u32 _pad;
	__u64 id; // goroutine id, or *url.URL for client requests
};

// Server requests in flight, in a set-associative table keyed by process
// and goroutine: INFLIGHT_WAYS slots per set, the set chosen by a hash of
// the key, a slot owned by the 64-bit tag of its key (0: free).
//
// Why not an LRU hash map: a request is one update, one lookup and one
// delete, which cost 0.7 us a request here under load (bpf_stats). Array
// lookups are inlined by the verifier, so finding a slot is a few loads
// and a claim is one compare-and-swap. A keep-alive connection's goroutine
// serves its requests one after another and reuses its slot. When all
// slots of a set are taken (hundreds of requests in flight) the oldest is
// replaced and counted as lost: bounded like an LRU, and cleaned the same
// way (freed when the request ends, swept when the process exits).
#define INFLIGHT_SLOTS 8192
#define INFLIGHT_WAYS 4

struct server_slot {
	__u64 tag; // inflight_tag(pid, goid); 0: free
	struct server_req req;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, INFLIGHT_SLOTS);
	__type(key, __u32);
	__type(value, struct server_slot);
} inflight SEC(".maps");

// pid in the top 22 bits (PID_MAX_LIMIT is 2^22), the goroutine id below.
static __always_inline __u64 inflight_tag(__u32 pid, __u64 goid)
{
	return (__u64)pid << 42 | (goid & ((1ULL << 42) - 1));
}

static __always_inline __u32 inflight_set(__u64 tag)
{
	return (__u32)((tag * 0x9E3779B97F4A7C15ULL) >> 40) & (INFLIGHT_SLOTS - INFLIGHT_WAYS);
}

// The slot holding the in-flight request of (pid, goid), or NULL.
static __always_inline struct server_slot *inflight_find(__u32 pid, __u64 goid)
{
	__u64 tag = inflight_tag(pid, goid);
	__u32 set = inflight_set(tag);
	for (__u32 i = 0; i < INFLIGHT_WAYS; i++) {
		__u32 k = set + i;
		struct server_slot *slot = bpf_map_lookup_elem(&inflight, &k);
		if (slot && slot->tag == tag)
			return slot;
	}
	return NULL;
}

// A slot for a request of (pid, goid) that starts: its own (a request that
// never ended), else a free one, else the set's oldest, which is lost.
static __always_inline struct server_slot *inflight_claim(__u32 pid, __u64 goid)
{
	__u64 tag = inflight_tag(pid, goid);
	__u32 set = inflight_set(tag);
	struct server_slot *oldest = NULL;
	for (__u32 i = 0; i < INFLIGHT_WAYS; i++) {
		__u32 k = set + i;
		struct server_slot *slot = bpf_map_lookup_elem(&inflight, &k);
		if (!slot)
			return NULL;
		if (slot->tag == tag)
			return slot;
		if (!oldest || slot->req.start_ns < oldest->req.start_ns)
			oldest = slot;
	}
	for (__u32 i = 0; i < INFLIGHT_WAYS; i++) {
		__u32 k = set + i;
		struct server_slot *slot = bpf_map_lookup_elem(&inflight, &k);
		if (slot && __sync_val_compare_and_swap(&slot->tag, 0, tag) == 0)
			return slot;
	}
	if (oldest) {
		count_lost();
		oldest->tag = tag;
	}
	return oldest;
}

// Client requests in flight: an entry is a whole event (1.3 KiB), so 2048
// of them (2.7 MiB) per traced binary.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 2048);
	__type(key, struct go_key);
	__type(value, struct http_event);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
} clients SEC(".maps");

// The client request a goroutine made last (its *url.URL key in clients),
// so a failure reported on that goroutine finds it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 2048);
	__type(key, struct go_key);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
} client_calls SEC(".maps");

// Processes whose read() calls are watched for requests: the traced pid,
// or every process running the traced executable (see zt_http_exec).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} traced SEC(".maps");

// traced's value: flags.
#define TRACED_ACTIVE 2 // the process has had a request: mark_active was called

// The first byte of a request that a 1-byte read took, by process and fd.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct go_key);
	__type(value, __u8);
} split SEC(".maps");

// Set once a TLS request was served without a start: user space then
// attaches the readTransfer probe.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} need_start SEC(".maps");

// Server request durations, aggregated here for the
// http.server.request.duration histogram: every request counts, sampled or
// not, and an unsampled request then costs no event at all. The key holds
// what the metric's attributes derive from.
#define N_BOUNDS 14 // the semantic conventions' buckets, see dur_bounds_ns

struct dur_key {
	char method[METHOD_LEN];
	char route[ROUTE_LEN]; // the ServeMux pattern
	__u16 status;
	__u8 tls;
	__u8 proto_major;
	__u8 proto_minor;
	__u8 _pad[3];
};

struct dur_val {
	__u64 count;
	__u64 sum_ns;
	__u64 buckets[N_BOUNDS + 1]; // bucket i: (bound i-1, bound i]
};

const struct dur_key *unused_dur_key __attribute__((unused));
const struct dur_val *unused_dur_val __attribute__((unused));

// Past 1024 request shapes (a cardinality problem anyway) new ones are
// counted as lost.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct dur_key);
	__type(value, struct dur_val);
} durations SEC(".maps");

// Processes that hit a probe, so their exit can be reported.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} active SEC(".maps");

// Event under construction, request header bytes and a copy of a Go
// struct's first bytes: too big for the stack.
#define OBJ_LEN 256
struct scratch {
	struct http_event ev;
	struct server_req req;
	char obj[OBJ_LEN + 16];
	char hdr[HDR_MAX + 192]; // slack: reads run past the last byte scanned
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

static __always_inline __u32 current_pid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline void mark_active(__u32 pid)
{
	__u8 one = 1;
	if (!bpf_map_lookup_elem(&active, &pid))
		bpf_map_update_elem(&active, &pid, &one, BPF_ANY);
}

static __always_inline void random_bytes(__u8 *dst, int n)
{
	for (int i = 0; i < n; i += 4) {
		__u32 r = bpf_get_prandom_u32();
		__builtin_memcpy(dst + i, &r, 4);
	}
}

static __always_inline bool sample_root(const __u8 *trace_id)
{
	__u64 x = 0;
	for (int i = 8; i < 16; i++)
		x = (x << 8) | trace_id[i];
	return (x >> 1) < sample_bound;
}

// Appends len bytes of user memory at ptr to ev->data as string field f,
// keeping at most max bytes (max <= PATH_LEN).
static __always_inline void put_str(struct http_event *ev, int f, const char *ptr, __u64 len, __u32 max)
{
	__u32 off = ev->data_len;
	if (!ptr || !len || off >= DATA_MAX || f >= STR_COUNT)
		return;
	if (len > max)
		len = max;
	if (bpf_probe_read_user(&ev->data[bounded(off, DATA_MAX - 1)], bounded(len, PATH_LEN * 2 - 1), ptr))
		return;
	ev->str_off[f & (STR_COUNT - 1)] = off;
	ev->str_len[f & (STR_COUNT - 1)] = len;
	ev->data_len = off + len;
}

// Appends the Go string at base+off as field f.
static __always_inline void put_go_string(struct http_event *ev, int f, const void *base, __u64 off, __u32 max)
{
	struct go_string str = {};
	if (base && bpf_probe_read_user(&str, sizeof(str), base + off) == 0 && str.len > 0)
		put_str(ev, f, str.ptr, str.len, max);
}

static __always_inline void clear_strs(struct http_event *ev)
{
	__builtin_memset(ev->str_len, 0, sizeof(ev->str_len));
	ev->data_len = 0;
}

// Sends the event, trimmed to the string bytes used.
static __always_inline void emit(struct http_event *ev)
{
	__u64 size = offsetof(struct http_event, data) + bounded(ev->data_len, DATA_MAX * 2 - 1);
	if (size > sizeof(*ev))
		size = sizeof(*ev);
	if (bpf_ringbuf_output(&events, ev, size, ringbuf_wakeup_flags(size)))
		count_lost();
}

#endif
