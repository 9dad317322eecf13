// Package http turns HTTP/1.x requests served and made by unmodified Go
// programs (net/http) into OpenTelemetry spans and metrics. See http.bpf.c
// for the probes and their cost per request.
package http

import (
	"github.com/zerotel/zerotel/internal/bpfprobe"
	"github.com/zerotel/zerotel/internal/goprobe"
)

// uprobes: the functions this family probes, and the offsets each reads.
var uprobes = []goprobe.Uprobe{
	{
		Symbol: "net/http.(*response).finishRequest", Program: httpProgZtHttpFinishRequest, AtJump: "jump_finish_request",
		Does: "server request end",
		// Method, target, version and headers come from the request bytes.
		Needs: []string{"off_g_goid", "off_rw_req", "off_rw_status", "off_req_remote_addr", "off_req_tls"},
	},
	{
		Symbol: "net/http.(*Transport).roundTrip", Program: httpProgZtHttpRoundTrip, AtJump: "jump_round_trip",
		Does: "client request start",
		Needs: []string{"off_g_goid", "off_g_parent_goid", "off_req_method", "off_req_url", "off_url_scheme",
			"off_url_host", "off_url_path", "off_url_raw_query"},
	},
	{
		Symbol: "net/http.ReadResponse", Program: httpProgZtHttpReadResponse, AtJump: "jump_read_response",
		Does:  "client request end",
		Needs: []string{"off_req_url", "off_bufio_buf", "off_bufio_r"},
	},
	{
		Symbol: "net/http.urlErrorOp", Program: httpProgZtHttpClientError, AtJump: "jump_url_error_op",
		Does:  "client request failure",
		Needs: []string{"off_g_goid"},
	},
	{
		// Lazy: read() shows plain-HTTP requests starting; this probe is
		// attached only once a request over TLS is seen (see no_start).
		Symbol: readTransferSymbol, Program: httpProgZtHttpReadTransfer, AtJump: "jump_read_transfer",
		Does: "server request start (TLS, or no read() tracepoint)", Lazy: true,
		Needs: []string{"off_g_goid", "off_bufio_buf", "off_bufio_r"},
	},
}

// fields: every struct field the programs read, as load-time constants.
var fields = []goprobe.Field{
	{Const: "off_g_goid", Struct: "runtime.g", Field: "goid"},
	{Const: "off_g_parent_goid", Struct: "runtime.g", Field: "parentGoid"},
	{Const: "off_req_method", Struct: "net/http.Request", Field: "Method"},
	{Const: "off_req_url", Struct: "net/http.Request", Field: "URL"},
	{Const: "off_req_remote_addr", Struct: "net/http.Request", Field: "RemoteAddr"},
	{Const: "off_req_tls", Struct: "net/http.Request", Field: "TLS"},
	{Const: "off_req_pattern", Struct: "net/http.Request", Field: "Pattern", Flag: "has_pattern"},
	{Const: "off_url_scheme", Struct: "net/url.URL", Field: "Scheme"},
	{Const: "off_url_host", Struct: "net/url.URL", Field: "Host"},
	{Const: "off_url_path", Struct: "net/url.URL", Field: "Path"},
	{Const: "off_url_raw_query", Struct: "net/url.URL", Field: "RawQuery"},
	{Const: "off_rw_req", Struct: "net/http.response", Field: "req"},
	{Const: "off_rw_status", Struct: "net/http.response", Field: "status"},
	{Const: "off_bufio_buf", Struct: "bufio.Reader", Field: "buf"},
	{Const: "off_bufio_r", Struct: "bufio.Reader", Field: "r"},
}

// tracepoints: a socket read shows requests starting (sock_recv_length;
// on older kernels the read() syscall tracepoint; without either,
// readTransfer is attached at once: two uprobe hits a request); execs of the traced
// executable add processes to watch; exits sweep a process's map entries.
var tracepoints = []bpfprobe.Tracepoint{
	{Group: "sock", Name: "sock_recv_length", Program: httpProgZtHttpSockRecv, Optional: true,
		Else: &bpfprobe.Tracepoint{Group: "syscalls", Name: "sys_exit_read", Program: httpProgZtHttpRead}},
	{Group: "sched", Name: "sched_process_exec", Program: httpProgZtHttpExec, Optional: true},
	{Group: "sched", Name: "sched_process_exit", Program: httpProgZtHttpExit, Optional: true},
}
