//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// HTTP/1.x server and client spans from unmodified Go binaries (net/http).
//
// Probe hits per traced operation (uprobes on the JBE after the stack
// check, an instruction the kernel emulates: ~0.8 us in a loop, several us
// under load, not the ~11 us of a single-stepped one):
//   server request: 1 uprobe   (*response).finishRequest (handler done: end)
//                   + the sock:sock_recv_length tracepoint of its read()
//                     (request bytes arrive: start, trace context, request
//                     line and headers; syscalls:sys_exit_read on older kernels)
//   over TLS:       2 uprobes  + readTransfer (request parsed: start),
//                     attached once a TLS request is seen
//   client request: 2 uprobes  (*Transport).roundTrip (start)
//                              ReadResponse (response arrives: end), or
//                              urlErrorOp (failed before any response)
// No return probes: Go moves goroutine stacks, which breaks uretprobes.
//
// In-flight state lives in bounded maps keyed by process and goroutine id
// (server: the inflight table, see http.h) or process and *url.URL (client
// LRU maps: the request is shallow-copied inside the transport, its URL
// pointer is not), freed when the operation ends and swept by user space
// when the process exits.
#include "vmlinux.h"
#include "zerotel.h"
#include "goabi.h"
#include "http.h"
#include "headers.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- server ---- */

// Starts a server request on goroutine g from its raw header bytes at buf:
// the trace context (an incoming traceparent, else new ids and the
// sampling decision), the request line, host and user agent. first, if not
// 0, is the request's first byte, which an earlier 1-byte read took.
// Returns false if the bytes are not an HTTP/1.x request.
static __always_inline bool server_start(struct scratch *s, __u32 pid, void *g, const char *buf, __s64 n,
					 __u32 have, char first)
{
	if (!buf || n <= 0)
		return false;
	struct server_req *r = &s->req;
	// Zeroed up to the strings: those are used only when set (method_len,
	// host[0], user_agent[0]), not worth ~0.5 KB of stores a request.
	__builtin_memset(r, 0, offsetof(struct server_req, line));
	r->host[0] = 0;
	r->user_agent[0] = 0;
	r->start_ns = bpf_ktime_get_boot_ns();
	if (n > HDR_MAX)
		n = HDR_MAX;
	__builtin_memset(&s->hdr[HDR_MAX], 0, 192);
	if (have != HEAD_LEN) {
		// Nothing read yet (readTransfer), or all of it (a short read).
		if (!have && bpf_probe_read_user(s->hdr, n & (HDR_MAX - 1) ?: HDR_MAX, buf))
			return false;
	} else if (n > HEAD_LEN) {
		__u32 rest = n - HEAD_LEN;
		if (rest > HDR_MAX - HEAD_LEN)
			rest = HDR_MAX - HEAD_LEN;
		if (bpf_probe_read_user(&s->hdr[HEAD_LEN], rest, buf + HEAD_LEN))
			return false;
	}
	struct hdr_scan sc = {.s = s, .len = n};
	bpf_loop((n + 7) / 8, scan_word, &sc, 0);
	// Bytes are a request only if the first line ends in "HTTP/1.x\r\n"
	// (a file starting with "GET " is not; readTransfer also reads the
	// responses a client gets, which start with "HTTP/1.x").
	if (!parse_request_line(s, sc.first_nl, first, r))
		return false;
	r->parent_remote = sc.found_tp;
	if (!r->parent_remote) {
		random_bytes(r->trace_id, 16);
		r->sampled = sample_root(r->trace_id);
	} else if (!parent_based) {
		r->sampled = sample_root(r->trace_id);
	}
	random_bytes(r->span_id, 8);
	struct server_slot *slot = inflight_claim(pid, go_read_int(g, off_g_goid));
	if (!slot)
		return false;
	__builtin_memcpy(&slot->req, r, sizeof(*r));
	return true;
}

// A read() in a traced process returned ret bytes. If they start an
// HTTP/1.x request, this is where it starts: no uprobe needed, so a
// plain-HTTP request costs one uprobe hit (finishRequest) in all. A
// tracepoint hit is far cheaper than a uprobe hit (KERNEL.md). sock_only:
// called from a socket tracepoint, which also fires inside other syscalls.
static __always_inline int on_read(long ret, bool sock_only)
{
	if (ret < 1)
		return 0;
	__u32 pid = current_pid();
	__u8 *traced_flags = bpf_map_lookup_elem(&traced, &pid);
	if (!traced_flags)
		return 0;
	// read(fd, buf, n): the arguments are still in the saved user
	// registers, and R14 holds the goroutine that made the call.
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (sock_only && regs->orig_ax != __NR_read && regs->orig_ax != __NR_recvfrom)
		return 0; // recvmsg & co: no plain buffer in the registers
	__u64 fd = regs->di;
	const char *buf = (const char *)regs->si;
	void *g = (void *)regs->r14;
	struct go_key key = {.pid = pid, .id = fd};

	if (ret == 1) {
		// The server's background read takes one byte of the next request
		// on a kept-alive connection: remember it for the rest.
		__u8 c = 0;
		if (bpf_probe_read_user(&c, 1, buf) == 0 && c >= 'A' && c <= 'Z')
			bpf_map_update_elem(&split, &key, &c, BPF_ANY);
		return 0;
	}
	if (ret < 16) // shorter than any request line
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	// The first HEAD_LEN bytes at once: whether a request starts, and most
	// requests whole, in one read of user memory.
	__u32 have = ret < HEAD_LEN ? ret : HEAD_LEN;
	if (bpf_probe_read_user(s->hdr, have, buf))
		return 0;
	__u32 w = *(__u32 *)s->hdr;
	char first = 0;
	if (!is_method(w)) {
		__u8 *split_first = bpf_map_lookup_elem(&split, &key);
		if (!split_first)
			return 0;
		if (is_method((__u32)*split_first | w << 8))
			first = *split_first;
		bpf_map_delete_elem(&split, &key);
		if (!first)
			return 0;
	}
	if (server_start(s, pid, g, buf, ret, have, first) && !(*traced_flags & TRACED_ACTIVE)) {
		mark_active(pid);
		*traced_flags |= TRACED_ACTIVE;
	}
	return 0;
}

// A socket read returned (sock:sock_recv_length, in recent kernels: absent
// in 6.2, present in 6.5). Preferred to the read() syscall tracepoint:
// enabling any syscall tracepoint sends every syscall of every process
// through the kernel's slow syscall path.
SEC("tracepoint/sock/sock_recv_length")
int zt_http_sock_recv(struct trace_event_raw_sock_msg_length *ctx)
{
	if (ctx->flags & MSG_PEEK)
		return 0;
	return on_read(ctx->ret, true);
}

// read() returned: where the socket tracepoint is missing.
SEC("tracepoint/syscalls/sys_exit_read")
int zt_http_read(struct trace_event_raw_sys_exit *ctx)
{
	return on_read(ctx->ret, false);
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
	if (inflight_find(pid, go_read_int(g, off_g_goid)))
		return 0; // read() already started it
	// The request's header bytes are the start of the connection's read
	// buffer, up to the reader's position.
	void *br = GO_ARG3(regs);
	struct scratch *s = get_scratch();
	if (s && server_start(s, pid, g, go_read_ptr(br, off_bufio_buf), go_read_int(br, off_bufio_r), 0, 0))
		mark_active(pid);
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

static const __u64 dur_bounds_ns[N_BOUNDS] = {
	5000000ULL, 10000000ULL, 25000000ULL, 50000000ULL, 75000000ULL, 100000000ULL, 250000000ULL,
	500000000ULL, 750000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL, 7500000000ULL,
	10000000000ULL,
};

// Reads the Go string whose header is at off in s->obj into dst (zero
// filled: it is part of a map key). Returns the bytes kept.
static __always_inline __u32 key_string(struct scratch *s, char *dst, __u32 size, __u64 off)
{
	const char *ptr = (const char *)obj_word(s, off);
	__u64 len = obj_word(s, off + 8);
	if (!ptr || !len)
		return 0;
	if (len > size)
		len = size;
	if (bpf_probe_read_user(dst, bounded(len, size * 2 - 1) & (size - 1) ?: size, ptr))
		return 0;
	return len;
}

// Appends len bytes of the kernel copy src (a key field of size bytes) to
// ev->data as string field f: the key already holds what the span shows,
// so user memory is not read twice.
static __always_inline void put_copied(struct http_event *ev, int f, const char *src, __u32 len, __u32 size)
{
	__u32 off = ev->data_len;
	if (!len || off >= DATA_MAX || f >= STR_COUNT)
		return;
	__builtin_memcpy(&ev->data[bounded(off, DATA_MAX - 1)], src, size); // data has slack
	ev->str_off[f & (STR_COUNT - 1)] = off;
	ev->str_len[f & (STR_COUNT - 1)] = len;
	ev->data_len = off + len;
}

// Adds a finished request, whose histogram key is k, to the duration
// histogram.
static __always_inline void record_duration(struct dur_key *k, struct http_event *ev)
{
	k->status = ev->status;
	k->tls = ev->tls;
	k->proto_major = ev->proto_major;
	k->proto_minor = ev->proto_minor;

	struct dur_val *v = bpf_map_lookup_elem(&durations, k);
	if (!v) {
		struct dur_val zero = {};
		bpf_map_update_elem(&durations, k, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&durations, k);
		if (!v) {
			count_lost(); // the map is full
			return;
		}
	}
	__u64 d = ev->end_ns - ev->start_ns;
	__u32 b = N_BOUNDS;
	for (int i = N_BOUNDS - 1; i >= 0; i--)
		if (d <= dur_bounds_ns[i])
			b = i;
	v->count++;
	v->sum_ns += d;
	v->buckets[b & 15]++;
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
	struct server_slot *slot = inflight_find(pid, goid);
	if (!slot) {
		no_start(pid, GO_ARG1(regs));
		return 0;
	}
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct server_req *r = &slot->req;
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
	bool have_req = read_obj(s, req);
	struct dur_key k = {};
	__u32 method_len = r->method_len & (METHOD_LEN - 1), route_len = 0;
	for (int i = 0; i < 8; i++) // methods are at most 7 bytes
		if (i < method_len)
			k.method[i] = r->line[i];
	if (method_len) {
		ev->proto_major = 1;
		ev->proto_minor = r->proto_minor;
	}
	if (have_req) {
		ev->tls = obj_word(s, off_req_tls) != 0;
		if (has_pattern)
			route_len = key_string(s, k.route, ROUTE_LEN, off_req_pattern);
	}
	record_duration(&k, ev);
	if (!ev->sampled) {
		// Counted above; no span.
		slot->tag = 0;
		return 0;
	}
	put_copied(ev, STR_METHOD, k.method, method_len, METHOD_LEN);
	put_copied(ev, STR_ROUTE, k.route, route_len, ROUTE_LEN);
	if (method_len) {
		// The request target: user space splits path and query.
		put_copied(ev, STR_PATH, r->line, method_len + 1 + r->target_len, LINE_LEN);
		if (ev->str_len[STR_PATH]) {
			ev->str_off[STR_PATH] += method_len + 1;
			ev->str_len[STR_PATH] = r->target_len;
		}
	}
	// Header values as copied at the start: user space cuts them at "\r\n".
	if (r->host[0])
		put_copied(ev, STR_HOST, r->host, REQ_HOST_LEN, REQ_HOST_LEN);
	if (r->user_agent[0])
		put_copied(ev, STR_USER_AGENT, r->user_agent, UA_LEN, UA_LEN);
	if (have_req)
		obj_string(s, STR_PEER, off_req_remote_addr, ADDR_LEN);
	slot->tag = 0; // ev holds all it needs
	emit(ev);
	return 0;
}

/* ---- client ---- */

// Finds the trace context of the goroutine making a call: its own server
// request, else that of the goroutine that started it.
static __always_inline struct server_req *parent_of(__u32 pid, void *g)
{
	struct server_slot *slot = inflight_find(pid, go_read_int(g, off_g_goid));
	if (!slot)
		slot = inflight_find(pid, go_read_int(g, off_g_parent_goid));
	return slot ? &slot->req : NULL;
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
	struct go_key call = {.pid = pid, .id = ev->goid};
	__u64 url_key = key.id;
	bpf_map_update_elem(&client_calls, &call, &url_key, BPF_ANY);
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

// urlErrorOp(method string) builds the Op of the *url.Error that
// (*Client).Do returns when a request fails (refused, timed out, ...):
// called on errors only, on the goroutine that made the call. Its last
// client request ends there, without a response.
SEC("uprobe/urlErrorOp")
int zt_http_client_error(struct pt_regs *regs)
{
	if (go_stack_will_grow(regs, jump_url_error_op))
		return 0;
	__u32 pid = current_pid();
	struct go_key call = {.pid = pid, .id = go_read_int(GO_G(regs), off_g_goid)};
	__u64 *url_key = bpf_map_lookup_elem(&client_calls, &call);
	if (!url_key)
		return 0;
	struct go_key key = {.pid = pid, .id = *url_key};
	bpf_map_delete_elem(&client_calls, &call);
	struct http_event *ev = bpf_map_lookup_elem(&clients, &key);
	if (!ev)
		return 0; // it got its response: the error came later
	ev->end_ns = bpf_ktime_get_boot_ns();
	ev->status = 0;
	ev->no_response = 1;
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
	bpf_ringbuf_submit(ev, ringbuf_wakeup_flags(offsetof(struct http_event, data)));
	return 0;
}
