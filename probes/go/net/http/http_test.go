package http

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/zerotel/zerotel/internal/bpfprobe"
	"github.com/zerotel/zerotel/internal/goinspect"
	"github.com/zerotel/zerotel/internal/goprobe"
	"github.com/zerotel/zerotel/internal/testutil"
)

// variants of the test server the probes must handle.
var variants = []struct {
	name  string
	flags []string
}{
	{"normal", nil},
	{"stripped", []string{"-ldflags=-s -w"}},
	{"noopt", []string{"-gcflags=all=-N -l"}},
	{"pie", []string{"-buildmode=pie"}},
}

// collector gathers a tracer's events.
type collector struct {
	mu     sync.Mutex
	events []*Event
}

func (c *collector) add(e *Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, e)
}

// wait returns the events once n arrived (and no more within 300 ms).
func (c *collector) wait(t *testing.T, n int) []*Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got := len(c.events)
		c.mu.Unlock()
		if got >= n {
			time.Sleep(300 * time.Millisecond)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Event(nil), c.events...)
}

func attach(t *testing.T, path string, pid int, s Sampling) (*Tracer, *collector) {
	t.Helper()
	testutil.RequireRoot(t)
	bin, err := goinspect.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	tr, warnings, err := Attach(goprobe.Target{Binary: bin, PID: pid}, s)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %v", w)
	}
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tr.Run(ctx, c.add) }()
	t.Cleanup(func() { cancel(); <-done; tr.Close() })
	return tr, c
}

// server runs the test server binary and returns its base URL.
func server(t *testing.T, bin string, args ...string) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("server output: %v", err)
	}
	return "http://" + strings.TrimSpace(strings.TrimPrefix(line, "listening on ")), cmd
}

// request is one step of the scripted sequence.
type request struct {
	method, path, body, traceparent string
}

var script = []request{
	{method: "GET", path: "/users/42"},
	{method: "POST", path: "/items", body: strings.Repeat("x", 1500)},
	{method: "GET", path: "/nope?q=a%20b&x=1"}, // url.query as sent
	{method: "GET", path: "/fail"},
	{method: "GET", path: "/users/9", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
	{method: "GET", path: "/fanout"},
}

// do runs the script and returns each response as text (status, headers
// but Date, body) to compare runs with and without zerotel.
func do(t *testing.T, base string) []string {
	t.Helper()
	var out []string
	for _, r := range script {
		req, _ := nethttp.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
		req.Header.Set("User-Agent", "zerotel-test/1.0")
		// A long header before traceparent: it must still be found.
		req.Header.Set("X-Padding", strings.Repeat("p", 1200))
		if r.traceparent != "" {
			req.Header.Set("Traceparent", r.traceparent)
		}
		resp, err := nethttp.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Header.Del("Date")
		var hs []string
		for k, v := range resp.Header {
			hs = append(hs, k+": "+strings.Join(v, ","))
		}
		sort.Strings(hs)
		out = append(out, fmt.Sprintf("%d %v %q", resp.StatusCode, hs, b))
	}
	return out
}

func TestHTTPServerAndClientSpans(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			bin := testutil.BuildGo(t, "httpserver", v.flags...)
			backend, backendCmd := server(t, bin)
			front, frontCmd := server(t, bin, "-backend", backend)
			untraced := do(t, front) // before zerotel: running servers are attached below

			tr, c := attach(t, bin, 0, Sampling{Ratio: 1, ParentBased: true})
			traced := do(t, front)
			for i := range untraced {
				if untraced[i] != traced[i] {
					t.Errorf("response %d differs with zerotel:\n without %s\n with    %s", i, untraced[i], traced[i])
				}
			}
			// 6 front server spans, 1 client span, 1 backend server span.
			events := c.wait(t, 8)
			checkScript(t, events, uint32(frontCmd.Process.Pid), uint32(backendCmd.Process.Pid), front, backend)

			frontCmd.Process.Kill()
			backendCmd.Process.Kill()
			frontCmd.Wait()
			backendCmd.Wait()
			waitEmpty(t, tr)
		})
	}
}

// waitEmpty checks the in-flight maps drain once the traced processes exit.
func waitEmpty(t *testing.T, tr *Tracer) {
	t.Helper()
	var counts map[string]int
	for range 50 {
		counts = tr.MapEntries()
		total := 0
		for _, n := range counts {
			total += n
		}
		if total == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("maps not empty after the processes exited: %v", counts)
}

func find(events []*Event, pid uint32, kind Kind, path string) []*Event {
	var out []*Event
	for _, e := range events {
		if e.PID == pid && e.Kind == kind && e.Path == path {
			out = append(out, e)
		}
	}
	return out
}

func one(t *testing.T, events []*Event, pid uint32, kind Kind, path string) *Event {
	t.Helper()
	got := find(events, pid, kind, path)
	if len(got) != 1 {
		t.Fatalf("want 1 %s event for %s in pid %d, got %d among %d", kind, path, pid, len(got), len(events))
	}
	return got[0]
}

func checkScript(t *testing.T, events []*Event, front, backend uint32, base, backendURL string) {
	t.Helper()
	if len(events) != 8 {
		for _, e := range events {
			t.Logf("%+v", *e)
		}
		t.Fatalf("want 8 events, got %d", len(events))
	}
	port := strings.TrimPrefix(base, "http://127.0.0.1:")

	u := one(t, events, front, Server, "/users/42")
	want := map[string]string{
		"name": "GET /users/{id}", "http.request.method": "GET", "url.path": "/users/42", "url.scheme": "http",
		"http.route": "/users/{id}", "http.response.status_code": "200", "server.address": "127.0.0.1",
		"server.port": port, "client.address": "127.0.0.1", "network.protocol.version": "1.1",
		"user_agent.original": "zerotel-test/1.0", "error": "",
	}
	checkSpan(t, u, want)
	if u.Duration() < 20*time.Millisecond || u.Duration() > 2*time.Second {
		t.Errorf("GET /users/42 took %v, handler sleeps 20ms", u.Duration())
	}
	if u.Parent.IsValid() || !u.TraceID.IsValid() || !u.SpanID.IsValid() {
		t.Errorf("GET /users/42: want a root span with ids, got trace %v span %v parent %v", u.TraceID, u.SpanID, u.Parent)
	}

	checkSpan(t, one(t, events, front, Server, "/items"), map[string]string{
		"name": "POST /items", "http.request.method": "POST", "http.route": "/items", "http.response.status_code": "201", "error": ""})
	checkSpan(t, one(t, events, front, Server, "/nope"), map[string]string{
		"name": "GET", "http.route": "", "http.response.status_code": "404", "error": "",
		"url.path": "/nope", "url.query": "q=a%20b&x=1"})
	checkSpan(t, one(t, events, front, Server, "/fail"), map[string]string{
		"name": "GET /fail", "http.response.status_code": "500", "error": "500"})

	in := one(t, events, front, Server, "/users/9")
	if in.TraceID.String() != "0af7651916cd43dd8448eb211c80319c" || in.Parent.String() != "b7ad6b7169203331" || !in.ParentRemote {
		t.Errorf("traceparent not continued: trace %v parent %v remote %v", in.TraceID, in.Parent, in.ParentRemote)
	}

	fan := one(t, events, front, Server, "/fanout")
	cli := one(t, events, front, Client, "/users/7")
	checkSpan(t, cli, map[string]string{
		"name": "GET", "http.request.method": "GET", "url.full": backendURL + "/users/7",
		"http.response.status_code": "200", "server.address": "127.0.0.1",
		"server.port": strings.TrimPrefix(backendURL, "http://127.0.0.1:")})
	if cli.TraceID != fan.TraceID || cli.Parent != fan.SpanID {
		t.Errorf("client span (trace %v parent %v) is not a child of the /fanout span (trace %v span %v)", cli.TraceID, cli.Parent, fan.TraceID, fan.SpanID)
	}
	if cli.Start.Before(fan.Start) || cli.End.After(fan.End) || cli.Duration() < 20*time.Millisecond {
		t.Errorf("client span %v..%v not within /fanout %v..%v, or shorter than the backend's 20ms", cli.Start, cli.End, fan.Start, fan.End)
	}
	b := one(t, events, backend, Server, "/users/7")
	if b.Start.Before(cli.Start) || b.End.After(cli.End) {
		t.Errorf("backend span %v..%v not within the client span %v..%v", b.Start, b.End, cli.Start, cli.End)
	}
}

// checkSpan compares the span's name, error and attributes with want ("" = absent).
func checkSpan(t *testing.T, e *Event, want map[string]string) {
	t.Helper()
	s := e.Span()
	got := map[string]string{"name": s.Name, "error": s.Error}
	for _, a := range s.Attributes {
		got[string(a.Key)] = a.Value.Emit()
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s %s: %s=%q, want %q", e.Kind, e.Path, k, got[k], v)
		}
	}
	if s.Kind != map[Kind]trace.SpanKind{Server: trace.SpanKindServer, Client: trace.SpanKindClient}[e.Kind] {
		t.Errorf("%s %s: span kind %v", e.Kind, e.Path, s.Kind)
	}
}

// TestHTTPSServer: read() shows only ciphertext, so the first TLS request
// makes zerotel attach the readTransfer probe; the requests after it are
// spans with url.scheme https.
func TestHTTPSServer(t *testing.T) {
	bin := testutil.BuildGo(t, "httpserver")
	tr, c := attach(t, bin, 0, Sampling{Ratio: 1, ParentBased: true})
	base, cmd := server(t, bin, "-tls")
	base = strings.Replace(base, "http://", "https://", 1)
	client := &nethttp.Client{Transport: &nethttp.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(path string) {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get("/users/0") // seen ending without a start: the probe is attached
	time.Sleep(500 * time.Millisecond)
	get("/users/1")
	get("/fail")
	events := c.wait(t, 2)
	if len(events) != 2 {
		t.Fatalf("want spans for the 2 requests after the first, got %d: %+v", len(events), events)
	}
	pid := uint32(cmd.Process.Pid)
	checkSpan(t, one(t, events, pid, Server, "/users/1"), map[string]string{
		"name": "GET /users/{id}", "url.scheme": "https", "http.response.status_code": "200", "url.path": "/users/1"})
	checkSpan(t, one(t, events, pid, Server, "/fail"), map[string]string{
		"name": "GET /fail", "url.scheme": "https", "http.response.status_code": "500", "error": "500"})
	if u := one(t, events, pid, Server, "/users/1"); u.Duration() < 20*time.Millisecond {
		t.Errorf("duration %v, handler sleeps 20ms", u.Duration())
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitEmpty(t, tr)
}

// TestRequestStartFallbacks: where the socket read tracepoint is missing
// (older kernels) the read() syscall tracepoint marks request starts;
// without either, the readTransfer uprobe does. Spans are the same.
func TestRequestStartFallbacks(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildGo(t, "httpserver")
	for _, tc := range []struct {
		name     string
		readExit string // the read() tracepoint, or one that does not exist
	}{
		{"read syscall", "sys_exit_read"},
		{"readTransfer uprobe", "sys_exit_no_such_syscall"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := slices.Clone(tracepoints)
			t.Cleanup(func() { tracepoints = saved })
			for i := range tracepoints {
				if tracepoints[i].Program == httpProgZtHttpSockRecv {
					tracepoints[i].Name = "sock_no_such_event" // as an older kernel
					tracepoints[i].Else = &bpfprobe.Tracepoint{Group: "syscalls", Name: tc.readExit, Program: httpProgZtHttpRead}
				}
			}
			tr, c := attach(t, bin, 0, Sampling{Ratio: 1, ParentBased: true})
			// With a read tracepoint, readTransfer waits for a TLS request.
			waiting, want := tr.probes.Waiting(readTransferSymbol), tc.readExit == "sys_exit_read"
			if waiting != want {
				t.Errorf("readTransfer not attached yet: %v, want %v", waiting, want)
			}
			base, cmd := server(t, bin)
			do(t, base)
			events := c.wait(t, 6)
			pid := uint32(cmd.Process.Pid)
			checkSpan(t, one(t, events, pid, Server, "/users/42"), map[string]string{
				"name": "GET /users/{id}", "http.response.status_code": "200", "user_agent.original": "zerotel-test/1.0"})
			in := one(t, events, pid, Server, "/users/9")
			if in.TraceID.String() != "0af7651916cd43dd8448eb211c80319c" || in.Parent.String() != "b7ad6b7169203331" {
				t.Errorf("traceparent not continued: trace %v parent %v", in.TraceID, in.Parent)
			}
		})
	}
}

// TestClientCallWithoutResponse: a handler's call to a port nobody listens
// on is a client span with status Error and no status code, child of the
// handler's span.
func TestClientCallWithoutResponse(t *testing.T) {
	testutil.RequireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	bin := testutil.BuildGo(t, "httpserver")
	_, c := attach(t, bin, 0, Sampling{Ratio: 1, ParentBased: true})
	base, cmd := server(t, bin, "-backend", closed)
	resp, err := nethttp.Get(base + "/fanout")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	events := c.wait(t, 2)
	pid := uint32(cmd.Process.Pid)
	fan := one(t, events, pid, Server, "/fanout")
	cli := one(t, events, pid, Client, "/users/7")
	if !cli.NoResponse || cli.Status != 0 || cli.Parent != fan.SpanID || cli.TraceID != fan.TraceID {
		t.Errorf("client span %+v, want no response, child of %v", *cli, fan.SpanID)
	}
	checkSpan(t, cli, map[string]string{"name": "GET", "error": "no response", "error.type": "_OTHER",
		"http.response.status_code": "", "url.full": closed + "/users/7"})
}

// TestUnfinishedRequestSwept: a request still in its handler when the
// server is killed leaves its in-flight slot taken; the process's exit
// frees it.
func TestUnfinishedRequestSwept(t *testing.T) {
	bin := testutil.BuildGo(t, "httpserver")
	tr, _ := attach(t, bin, 0, Sampling{Ratio: 1, ParentBased: true})
	base, cmd := server(t, bin)
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The handler reads a body that never comes in full: it stays in flight.
	fmt.Fprintf(conn, "POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
	deadline := time.Now().Add(5 * time.Second)
	for tr.MapEntries()[httpMapInflight] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("request in the handler: in-flight slots %v, want 1", tr.MapEntries())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitEmpty(t, tr)
}
