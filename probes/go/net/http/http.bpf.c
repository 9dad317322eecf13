//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// HTTP/1.x server and client spans from unmodified Go binaries (net/http).
//
// Probe hits per traced operation (uprobes on the JBE after the stack
// check, an instruction the kernel emulates: ~0.8 us in a loop, several us
// under load, not the ~11 us of a single-stepped one):
//   server request: 1 uprobe   (*response).finishRequest (handler done: end)
//                   + the syscalls:sys_exit_read tracepoint of its read()
//                     (request bytes arrive: start, trace context)
//   over TLS:       2 uprobes  + readTransfer (request parsed: start),
//                     attached once a TLS request is seen
//   client request: 2 uprobes  (*Transport).roundTrip (start)
//                              ReadResponse (response arrives: end)
// No return probes: Go moves goroutine stacks, which breaks uretprobes.
//
// In-flight state lives in LRU maps keyed by process and goroutine id
// (server) or process and *url.URL (client: the request is shallow-copied
// inside the transport, its URL pointer is not), deleted when the operation
// ends and swept by user space when the process exits.
#include "vmlinux.h"
#include "zerotel.h"
#include "goabi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define METHOD_LEN 16
#define PATH_LEN 256 // the longest string field
#define ROUTE_LEN 128
#define HOST_LEN 128
#define QUERY_LEN 128
#define ADDR_LEN 64
#define UA_LEN 128
#define HDR_MAX 2048 // request header bytes searched for traceparent / user-agent

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

struct trace_ctx {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 sampled;
	__u8 _pad[7];
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
	__u8 _pad[1];
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
struct server_req {
	__u64 start_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_span_id[8];
	__u8 sampled;
	__u8 parent_remote;
	__u8 _pad[6];
	char user_agent[UA_LEN];
};

// Field offsets and probe placement of the traced binary, set at load time
// from its DWARF or zerotel's offsets table (see fields.go).
volatile const __u64 off_g_goid;
volatile const __u64 off_g_parent_goid;
volatile const __u64 off_req_method;
volatile const __u64 off_req_url;
volatile const __u64 off_req_proto_major;
volatile const __u64 off_req_proto_minor;
volatile const __u64 off_req_host;
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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct go_key);
	__type(value, struct server_req);
	// Per-CPU LRU lists: no global lock on every request (measured here:
	// finishRequest 2.2 -> 1.7 us a run under load).
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
} servers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct go_key);
	__type(value, struct http_event);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
} clients SEC(".maps");

// Processes whose read() calls are watched for requests: the traced pid,
// or every process running the traced executable (see zt_http_exec).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} traced SEC(".maps");

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
	if (bpf_ringbuf_output(&events, ev, size, ringbuf_wakeup_flags(&events)))
		count_lost();
}

/* ---- traceparent and user-agent from the raw request header bytes ---- */

static __always_inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

// Parses "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>" at p.
static __always_inline bool parse_traceparent(const char *p, struct server_req *ev)
{
	if (p[0] != '0' || p[1] != '0' || p[2] != '-' || p[35] != '-' || p[52] != '-')
		return false;
	__u8 any = 0;
	for (int i = 0; i < 16; i++) {
		int hi = hexval(p[3 + 2 * i]), lo = hexval(p[4 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		ev->trace_id[i] = hi << 4 | lo;
		any |= ev->trace_id[i];
	}
	for (int i = 0; i < 8; i++) {
		int hi = hexval(p[36 + 2 * i]), lo = hexval(p[37 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		ev->parent_span_id[i] = hi << 4 | lo;
		any |= ev->parent_span_id[i];
	}
	int f = hexval(p[54]);
	if (!any || f < 0)
		return false;
	ev->sampled = f & 1;
	return true;
}

struct hdr_scan {
	struct scratch *s;
	__u32 len;
	__u32 first_nl; // index of the first '\n': the end of the request line
	bool found_tp;
};

static __always_inline char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

// bpf_loop step over 8-byte words: only words holding a '\n' are looked at
// byte by byte, so the cost follows the number of header lines.
static long scan_word(__u32 w, struct hdr_scan *sc)
{
	__u32 base = w * 8;
	if (base >= sc->len || base >= HDR_MAX)
		return 1;
	struct scratch *s = sc->s;
	__u64 word = 0;
	__builtin_memcpy(&word, &s->hdr[base & (HDR_MAX - 1)], 8);
	__u64 x = word ^ 0x0a0a0a0a0a0a0a0aULL;
	if (!((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL))
		return 0;
	for (int k = 0; k < 8; k++) {
		__u32 i = (base + k) & (HDR_MAX - 1);
		if (s->hdr[i] != '\n')
			continue;
		if (!sc->first_nl)
			sc->first_nl = base + k;
		const char *l = &s->hdr[i + 1];
		char c0 = lower(l[0]);
		if (c0 == 't' && !sc->found_tp && lower(l[1]) == 'r' && lower(l[2]) == 'a' &&
		    lower(l[5]) == 'p' && lower(l[10]) == 't' && l[11] == ':') {
			// "traceparent:" (colon at i+12), an optional space, then
			// the 55-byte value.
			__u32 v = i + 14;
			if (s->hdr[(i + 13) & (HDR_MAX - 1)] != ' ')
				v = i + 13;
			if (v + 55 <= sc->len && v < HDR_MAX)
				sc->found_tp = parse_traceparent(&s->hdr[v & (HDR_MAX - 1)], &s->req);
		} else if (c0 == 'u' && lower(l[1]) == 's' && lower(l[4]) == '-' &&
			   lower(l[5]) == 'a' && l[10] == ':') {
			// "user-agent:" (colon at i+11), an optional space, then the
			// value: user space cuts it at "\r\n".
			__u32 v = i + 13;
			if (s->hdr[(i + 12) & (HDR_MAX - 1)] != ' ')
				v = i + 12;
			if (v < HDR_MAX)
				__builtin_memcpy(s->req.user_agent, &s->hdr[v & (HDR_MAX - 1)], UA_LEN);
		}
	}
	return 0;
}

/* ---- server ---- */

// The first 4 bytes of a request line, as a little-endian word.
#define W4(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

static __always_inline bool is_method(__u32 w)
{
	return w == W4('G', 'E', 'T', ' ') || w == W4('P', 'O', 'S', 'T') || w == W4('P', 'U', 'T', ' ') ||
	       w == W4('H', 'E', 'A', 'D') || w == W4('D', 'E', 'L', 'E') || w == W4('P', 'A', 'T', 'C') ||
	       w == W4('O', 'P', 'T', 'I') || w == W4('C', 'O', 'N', 'N') || w == W4('T', 'R', 'A', 'C');
}

// Starts a server request on goroutine g from its raw header bytes at buf:
// the trace context (an incoming traceparent, else new ids and the
// sampling decision) and the user agent. Returns false if the bytes are
// not an HTTP/1.x request.
static __always_inline bool server_start(__u32 pid, void *g, const char *buf, __s64 n, bool check_line)
{
	struct scratch *s = get_scratch();
	if (!s || !buf || n <= 0)
		return false;
	struct server_req *r = &s->req;
	__builtin_memset(r, 0, sizeof(*r));
	r->start_ns = bpf_ktime_get_boot_ns();
	if (n > HDR_MAX)
		n = HDR_MAX;
	__builtin_memset(&s->hdr[HDR_MAX], 0, 192);
	if (bpf_probe_read_user(s->hdr, n & (HDR_MAX - 1) ?: HDR_MAX, buf))
		return false;
	struct hdr_scan sc = {.s = s, .len = n};
	bpf_loop((n + 7) / 8, scan_word, &sc, 0);
	// Bytes read from a socket are a request only if the first line ends
	// in "HTTP/1.x\r\n" (a file starting with "GET " is not).
	if (check_line) {
		__u32 nl = sc.first_nl;
		if (nl < 14 || nl >= HDR_MAX)
			return false;
		const char *v = &s->hdr[(nl - 9) & (HDR_MAX - 1)];
		if (v[0] != 'H' || v[1] != 'T' || v[2] != 'T' || v[3] != 'P' || v[4] != '/' || v[5] != '1' || v[8] != '\r')
			return false;
	}
	r->parent_remote = sc.found_tp;
	if (!r->parent_remote) {
		random_bytes(r->trace_id, 16);
		r->sampled = sample_root(r->trace_id);
	} else if (!parent_based) {
		r->sampled = sample_root(r->trace_id);
	}
	random_bytes(r->span_id, 8);

	struct go_key key = {.pid = pid, .id = go_read_int(g, off_g_goid)};
	bpf_map_update_elem(&servers, &key, r, BPF_ANY);
	mark_active(pid);
	return true;
}

// read() returned in a traced process. If the bytes start an HTTP/1.x
// request, this is where it starts: no uprobe needed, so a plain-HTTP
// request costs one uprobe hit (finishRequest) in all. A tracepoint hit on
// read() is far cheaper than a uprobe hit (KERNEL.md).
SEC("tracepoint/syscalls/sys_exit_read")
int zt_http_read(struct trace_event_raw_sys_exit *ctx)
{
	long ret = ctx->ret;
	if (ret < 1)
		return 0;
	__u32 pid = current_pid();
	if (!bpf_map_lookup_elem(&traced, &pid))
		return 0;
	// read(fd, buf, n): the arguments are still in the saved user
	// registers, and R14 holds the goroutine that made the call.
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 fd = BPF_CORE_READ(regs, di);
	const char *buf = (const char *)BPF_CORE_READ(regs, si);
	void *g = (void *)BPF_CORE_READ(regs, r14);
	struct go_key key = {.pid = pid, .id = fd};

	__u32 w = 0;
	if (bpf_probe_read_user(&w, ret < 4 ? 1 : 4, buf))
		return 0;
	if (ret == 1) {
		// The server's background read takes one byte of the next request
		// on a kept-alive connection: remember it for the rest.
		if ((w & 0xff) >= 'A' && (w & 0xff) <= 'Z') {
			__u8 c = w;
			bpf_map_update_elem(&split, &key, &c, BPF_ANY);
		}
		return 0;
	}
	if (ret < 16) // shorter than any request line
		return 0;
	bool start = is_method(w);
	__u8 *first = bpf_map_lookup_elem(&split, &key);
	if (first) {
		if (!start)
			start = is_method((__u32)*first | w << 8);
		bpf_map_delete_elem(&split, &key);
	}
	if (start)
		server_start(pid, g, buf, ret, true);
	return 0;
}

// readTransfer(msg any, r *bufio.Reader) runs once the headers of an
// incoming request are parsed. Attached only to binaries that serve
// requests read() does not show in clear (TLS): see finishRequest.
SEC("uprobe/readTransfer")
int zt_http_read_transfer(struct pt_regs *regs)
{
	if (go_stack_will_grow(regs, jump_read_transfer))
		return 0;
	__u32 pid = current_pid();
	void *g = GO_G(regs);
	struct go_key key = {.pid = pid, .id = go_read_int(g, off_g_goid)};
	if (bpf_map_lookup_elem(&servers, &key))
		return 0; // read() already started it
	// The request's header bytes are the start of the connection's read
	// buffer, up to the reader's position.
	void *br = GO_ARG3(regs);
	server_start(pid, g, go_read_ptr(br, off_bufio_buf), go_read_int(br, off_bufio_r), false);
	return 0;
}

// Copies the first OBJ_LEN bytes of a Go struct: one read instead of one
// per field. Fields are then taken at their (8-aligned) offsets.
static __always_inline bool read_obj(struct scratch *s, const void *obj)
{
	return obj && bpf_probe_read_user(s->obj, OBJ_LEN, obj) == 0;
}

static __always_inline __u64 obj_word(struct scratch *s, __u64 off)
{
	return *(__u64 *)&s->obj[off & (OBJ_LEN - 8)];
}

// Appends the Go string whose header is at off in s->obj as field f.
static __always_inline void obj_string(struct scratch *s, int f, __u64 off, __u32 max)
{
	put_str(&s->ev, f, (const char *)obj_word(s, off), obj_word(s, off + 8), max);
}

// A request ends that read() did not show starting. Over TLS read() sees
// only ciphertext: ask user space, once, to attach the readTransfer probe
// (from then on this binary's requests cost two probe hits).
static __always_inline void no_start(__u32 pid, void *w)
{
	__u32 zero = 0;
	__u32 *asked = bpf_map_lookup_elem(&need_start, &zero);
	if (!asked || *asked)
		return;
	void *req = go_read_ptr(w, off_rw_req);
	if (!req || !go_read_ptr(req, off_req_tls))
		return;
	*asked = 1;
	struct http_event *ev = bpf_ringbuf_reserve(&events, offsetof(struct http_event, data), 0);
	if (!ev) {
		*asked = 0;
		count_lost();
		return;
	}
	__builtin_memset(ev, 0, offsetof(struct http_event, data));
	ev->kind = HTTP_NEED_START;
	ev->pid = pid;
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
}

// (*response).finishRequest(w): the handler returned; the response is
// about to be flushed.
SEC("uprobe/finishRequest")
int zt_http_finish_request(struct pt_regs *regs)
{
	if (go_stack_will_grow(regs, jump_finish_request))
		return 0;
	__u32 pid = current_pid();
	__u64 goid = go_read_int(GO_G(regs), off_g_goid);
	struct go_key key = {.pid = pid, .id = goid};
	struct server_req *r = bpf_map_lookup_elem(&servers, &key);
	if (!r) {
		no_start(pid, GO_ARG1(regs));
		return 0;
	}
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct http_event *ev = &s->ev;
	ev->kind = HTTP_SERVER;
	ev->pid = pid;
	ev->goid = goid;
	ev->start_ns = r->start_ns;
	ev->end_ns = bpf_ktime_get_boot_ns();
	__builtin_memcpy(ev->trace_id, r->trace_id, 16);
	__builtin_memcpy(ev->span_id, r->span_id, 8);
	__builtin_memcpy(ev->parent_span_id, r->parent_span_id, 8);
	ev->sampled = r->sampled;
	ev->parent_remote = r->parent_remote;
	clear_strs(ev);
	ev->proto_major = ev->proto_minor = ev->tls = 0;

	void *w = GO_ARG1(regs);
	ev->status = 200; // no WriteHeader: finishRequest writes 200
	void *req = NULL;
	if (read_obj(s, w)) {
		req = (void *)obj_word(s, off_rw_req);
		__s64 status = obj_word(s, off_rw_status);
		if (status)
			ev->status = status;
	}
	if (read_obj(s, req)) {
		// What the duration metric needs, sampled or not.
		obj_string(s, STR_METHOD, off_req_method, METHOD_LEN);
		if (has_pattern)
			obj_string(s, STR_ROUTE, off_req_pattern, ROUTE_LEN);
		ev->proto_major = obj_word(s, off_req_proto_major);
		ev->proto_minor = obj_word(s, off_req_proto_minor);
		ev->tls = obj_word(s, off_req_tls) != 0;
		if (ev->sampled) {
			// What only the span shows.
			obj_string(s, STR_HOST, off_req_host, HOST_LEN);
			obj_string(s, STR_PEER, off_req_remote_addr, ADDR_LEN);
			put_go_string(ev, STR_PATH, (void *)obj_word(s, off_req_url), off_url_path, PATH_LEN);
			if (r->user_agent[0] && ev->data_len < DATA_MAX) {
				__u32 off = ev->data_len;
				__builtin_memcpy(&ev->data[bounded(off, DATA_MAX - 1)], r->user_agent, UA_LEN);
				ev->str_off[STR_USER_AGENT] = off;
				ev->str_len[STR_USER_AGENT] = UA_LEN;
				ev->data_len = off + UA_LEN;
			}
		}
	}
	emit(ev);
	bpf_map_delete_elem(&servers, &key);
	return 0;
}

/* ---- client ---- */

// Finds the trace context of the goroutine making a call: its own server
// request, else that of the goroutine that started it.
static __always_inline struct server_req *parent_of(__u32 pid, void *g)
{
	struct go_key key = {.pid = pid, .id = go_read_int(g, off_g_goid)};
	struct server_req *parent = bpf_map_lookup_elem(&servers, &key);
	if (parent)
		return parent;
	key.id = go_read_int(g, off_g_parent_goid);
	return bpf_map_lookup_elem(&servers, &key);
}

// (*Transport).roundTrip(t, req): a client request starts.
SEC("uprobe/roundTrip")
int zt_http_round_trip(struct pt_regs *regs)
{
	if (go_stack_will_grow(regs, jump_round_trip))
		return 0;
	void *req = GO_ARG2(regs);
	void *url = req ? go_read_ptr(req, off_req_url) : NULL;
	if (!url)
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	__u32 pid = current_pid();
	struct http_event *ev = &s->ev;
	__builtin_memset(ev, 0, offsetof(struct http_event, data));
	ev->kind = HTTP_CLIENT;
	ev->pid = pid;
	ev->start_ns = bpf_ktime_get_boot_ns();
	ev->goid = go_read_int(GO_G(regs), off_g_goid);

	struct server_req *parent = parent_of(pid, GO_G(regs));
	if (parent) {
		__builtin_memcpy(ev->trace_id, parent->trace_id, 16);
		__builtin_memcpy(ev->parent_span_id, parent->span_id, 8);
		ev->sampled = parent->sampled;
	} else {
		random_bytes(ev->trace_id, 16);
		ev->sampled = sample_root(ev->trace_id);
	}
	random_bytes(ev->span_id, 8);
	put_go_string(ev, STR_METHOD, req, off_req_method, METHOD_LEN);
	put_go_string(ev, STR_SCHEME, url, off_url_scheme, 16);
	put_go_string(ev, STR_HOST, url, off_url_host, HOST_LEN);
	if (ev->sampled) {
		put_go_string(ev, STR_PATH, url, off_url_path, PATH_LEN);
		put_go_string(ev, STR_QUERY, url, off_url_raw_query, QUERY_LEN);
	}
	struct go_key key = {.pid = pid, .id = (__u64)url};
	bpf_map_update_elem(&clients, &key, ev, BPF_ANY);
	mark_active(pid);
	return 0;
}

// ReadResponse(r *bufio.Reader, req *Request): the transport's read loop
// got the first bytes of a response (it peeks one first): the client
// request ends. The status is read from the buffered status line.
SEC("uprobe/ReadResponse")
int zt_http_read_response(struct pt_regs *regs)
{
	if (go_stack_will_grow(regs, jump_read_response))
		return 0;
	void *req = GO_ARG2(regs);
	if (!req)
		return 0;
	struct go_key key = {.pid = current_pid(), .id = (__u64)go_read_ptr(req, off_req_url)};
	struct http_event *ev = bpf_map_lookup_elem(&clients, &key);
	if (!ev)
		return 0;
	ev->end_ns = bpf_ktime_get_boot_ns();
	ev->status = 0;
	void *br = GO_ARG1(regs);
	const char *buf = go_read_ptr(br, off_bufio_buf);
	__s64 pos = go_read_int(br, off_bufio_r);
	char line[12] = {};
	// "HTTP/1.1 200"
	if (buf && pos >= 0 && bpf_probe_read_user(line, sizeof(line), buf + pos) == 0 && line[0] == 'H' &&
	    line[8] == ' ' && line[9] >= '1' && line[9] <= '5' && line[10] >= '0' && line[10] <= '9' &&
	    line[11] >= '0' && line[11] <= '9')
		ev->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
	emit(ev);
	bpf_map_delete_elem(&clients, &key);
	return 0;
}

/* ---- processes ---- */

// A process execs the traced executable: watch its read() calls.
SEC("tracepoint/sched/sched_process_exec")
int zt_http_exec(void *ctx)
{
	if (!target_ino)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct inode *ino = BPF_CORE_READ(task, mm, exe_file, f_inode);
	if (BPF_CORE_READ(ino, i_ino) != target_ino || BPF_CORE_READ(ino, i_sb, s_dev) != target_dev)
		return 0;
	__u32 pid = current_pid();
	__u8 one = 1;
	bpf_map_update_elem(&traced, &pid, &one, BPF_ANY);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int zt_http_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	if ((__u32)id != pid)
		return 0;
	bpf_map_delete_elem(&traced, &pid);
	if (!bpf_map_lookup_elem(&active, &pid))
		return 0;
	bpf_map_delete_elem(&active, &pid);
	struct http_event *ev = bpf_ringbuf_reserve(&events, offsetof(struct http_event, data), 0);
	if (!ev) {
		count_lost();
		return 0;
	}
	__builtin_memset(ev, 0, offsetof(struct http_event, data));
	ev->kind = HTTP_PROCESS_EXIT;
	ev->pid = pid;
	bpf_ringbuf_submit(ev, ringbuf_wakeup_flags(&events));
	return 0;
}
