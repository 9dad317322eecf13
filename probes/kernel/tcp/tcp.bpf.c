//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// TCP connection lifecycle from the sock:inet_sock_set_state tracepoint: one
// event per connection when it closes. No kprobes: tracepoints only.
//
// Who owns a connection? State changes often run in softirq context, where the
// current task is whoever happened to be on the CPU, so the owner is taken
// only where the kernel runs in the owner's syscall:
//   CLOSE -> SYN_SENT         inside connect(): the connecting process
//   sys_exit_accept(4)        the accepting process (fd -> file -> socket)
//   -> FIN_WAIT1 / LAST_ACK   inside close()/shutdown(), if still unknown
#include "vmlinux.h"
#include "zerotel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

enum tcp_direction {
	TCP_DIR_CONNECT = 1, // outbound: this host called connect()
	TCP_DIR_ACCEPT = 2,  // inbound: a listener on this host accepted it
};

// A connection being tracked, keyed by its struct sock address.
struct tcp_conn {
	__u64 start_ns;
	__u32 pid;
	__u8 direction;
	__u8 established;
	__u8 _pad[2];
	char comm[16];
};

struct tcp_event {
	__u64 start_ns;       // SYN sent or received, CLOCK_BOOTTIME
	__u64 end_ns;         // socket closed
	__u64 bytes_sent;     // payload sent once (retransmissions not counted twice)
	__u64 bytes_received; // payload received
	__u32 pid;            // owner, 0 if never seen in a syscall
	__s32 error;          // sk_err at close: ECONNREFUSED, ETIMEDOUT, ...
	__u16 family;         // AF_INET or AF_INET6
	__u16 local_port;
	__u16 peer_port;
	enum tcp_direction direction;
	__u8 established;     // 0: the connection attempt failed
	__u8 _pad[3];
	__u8 local_addr[16];  // IPv4 in the first 4 bytes
	__u8 peer_addr[16];
	char comm[16];
};

const struct tcp_event *unused_tcp_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

DECLARE_LOST_COUNTER()

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tcp_conn);
} conns SEC(".maps");

static __always_inline void set_owner(struct tcp_conn *c)
{
	c->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(c->comm, sizeof(c->comm));
}

static __always_inline void emit_close(struct trace_event_raw_inet_sock_set_state *ctx,
				       __u64 key, struct tcp_conn *c)
{
	struct tcp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	struct tcp_sock *tp = (struct tcp_sock *)ctx->skaddr;
	e->start_ns = c->start_ns;
	e->end_ns = bpf_ktime_get_boot_ns();
	// Payload only: bytes_sent counts data segments (retransmissions too,
	// hence minus bytes_retrans); bytes_received counts sequence space,
	// which includes the peer's FIN. bytes_acked would count SYN and FIN.
	e->bytes_sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans);
	e->bytes_received = BPF_CORE_READ(tp, bytes_received);
	// The peer's FIN took one sequence number; tcp_fin() marks it SOCK_DONE.
	unsigned long flags = BPF_CORE_READ(&tp->inet_conn.icsk_inet.sk, __sk_common.skc_flags);
	if ((flags & (1UL << SOCK_DONE)) && e->bytes_received > 0)
		e->bytes_received--;
	e->pid = c->pid;
	e->error = BPF_CORE_READ(&tp->inet_conn.icsk_inet.sk, sk_err);
	e->family = ctx->family;
	e->local_port = ctx->sport;
	e->peer_port = ctx->dport;
	e->direction = c->direction;
	e->established = c->established;
	// Copied with bpf_core_read: the verifier forbids plain loads through a
	// context pointer moved by a relocated offset.
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	__builtin_memset(e->peer_addr, 0, sizeof(e->peer_addr));
	if (ctx->family == AF_INET6) {
		bpf_core_read(e->local_addr, 16, &ctx->saddr_v6);
		bpf_core_read(e->peer_addr, 16, &ctx->daddr_v6);
	} else {
		bpf_core_read(e->local_addr, 4, &ctx->saddr);
		bpf_core_read(e->peer_addr, 4, &ctx->daddr);
	}
	__builtin_memcpy(e->comm, c->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
}

SEC("tracepoint/sock/inet_sock_set_state")
int zt_tcp_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 key = (__u64)ctx->skaddr;
	int state = ctx->newstate;

	if (state == TCP_SYN_SENT) {
		struct tcp_conn c = {.start_ns = bpf_ktime_get_boot_ns(), .direction = TCP_DIR_CONNECT};
		set_owner(&c);
		bpf_map_update_elem(&conns, &key, &c, BPF_ANY);
		return 0;
	}
	if (state == TCP_SYN_RECV) {
		// A listener's child socket, created in softirq: owner comes with accept().
		struct tcp_conn c = {.start_ns = bpf_ktime_get_boot_ns(), .direction = TCP_DIR_ACCEPT};
		bpf_map_update_elem(&conns, &key, &c, BPF_ANY);
		return 0;
	}

	struct tcp_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return 0;
	switch (state) {
	case TCP_ESTABLISHED:
		c->established = 1;
		return 0;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		if (c->pid == 0) // close() by the owner, accept() was not seen
			set_owner(c);
		return 0;
	case TCP_CLOSE:
		// An inbound socket that never got established was never a connection.
		if (c->established || c->direction == TCP_DIR_CONNECT)
			emit_close(ctx, key, c);
		bpf_map_delete_elem(&conns, &key);
		return 0;
	}
	return 0;
}

// accept() and accept4() return the new connection's fd: follow it to its
// struct sock and name the accepting process as the owner.
static __always_inline int accepted(struct trace_event_raw_sys_exit *ctx)
{
	long fd = ctx->ret;
	if (fd < 0)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	__u64 key = (__u64)BPF_CORE_READ(sock, sk);
	struct tcp_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c && c->direction == TCP_DIR_ACCEPT)
		set_owner(c);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int zt_tcp_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return accepted(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int zt_tcp_accept(struct trace_event_raw_sys_exit *ctx)
{
	return accepted(ctx);
}
