// Package e2e holds zerotel's end-to-end tests against real tracing
// backends. They need root (zerotel loads BPF programs) and backends built
// from tools/: see scripts/test.sh.
package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zerotel/zerotel/internal/testutil"
)

// jaegerBinary is bin/jaeger, built from the tools/jaeger module. Without it
// the test skips, unless ZEROTEL_E2E_JAEGER=1 demands it (CI).
func jaegerBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(testutil.RepoRoot(), "bin", "jaeger")
	if _, err := os.Stat(bin); err != nil {
		const build = "cd tools/jaeger && go build -o ../../bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger"
		if os.Getenv("ZEROTEL_E2E_JAEGER") == "1" {
			t.Fatalf("ZEROTEL_E2E_JAEGER=1 but %s is missing (%v): build it with `%s`", bin, err, build)
		}
		t.Skipf("%s is missing: build it with `%s` to run this test (ZEROTEL_E2E_JAEGER=1 makes its absence a failure)", bin, build)
	}
	return bin
}

// proc is a process the test started, its stdout and stderr collected together.
type proc struct {
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    strings.Builder
	exited chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// start runs bin with args and env (added to this process's environment
// minus its OTEL_* variables); the process is killed when the test ends.
func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.exited })
	return p
}

// waitFor polls the output for re until timeout and returns its submatches.
func (p *proc) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(p.output()); m != nil {
			return m
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.cmd.ProcessState, re, p.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within %v:\n%s", p.name, re, timeout, p.output())
		}
	}
}

// interrupt sends SIGINT and waits for a clean exit.
func (p *proc) interrupt(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not exit within 20s of SIGINT:\n%s", p.name, p.output())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("%s exit code %d:\n%s", p.name, code, p.output())
	}
}

// freeAddrs returns n distinct 127.0.0.1 ports nobody listens on right now.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// startJaeger runs Jaeger v2 with tools/jaeger/config.yaml on fresh
// loopback ports and waits until its query API answers and its OTLP/gRPC
// receiver accepts connections. It returns the query and OTLP/gRPC addresses.
func startJaeger(t *testing.T, bin string) (query, otlpGRPC string) {
	t.Helper()
	a := freeAddrs(t, 4)
	query, otlpGRPC = a[0], a[1]
	j := start(t, "jaeger", []string{
		"ZT_JAEGER_QUERY_HTTP=" + query, "ZT_JAEGER_OTLP_GRPC=" + otlpGRPC,
		"ZT_JAEGER_OTLP_HTTP=" + a[2], "ZT_JAEGER_QUERY_GRPC=" + a[3],
	}, bin, "--config", "file:"+filepath.Join(testutil.RepoRoot(), "tools", "jaeger", "config.yaml"))
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case <-j.exited:
			t.Fatalf("jaeger exited (%v) before it served:\n%s", j.cmd.ProcessState, j.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger's query API (%s) or OTLP receiver (%s) not up after 60s:\n%s", query, otlpGRPC, j.output())
		}
		resp, err := client.Get("http://" + query + "/api/services")
		if err != nil {
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			continue
		}
		c, err := net.DialTimeout("tcp", otlpGRPC, time.Second)
		if err != nil {
			continue
		}
		c.Close()
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("jaeger output:\n%s", j.output())
			}
		})
		return query, otlpGRPC
	}
}

var listening = regexp.MustCompile(`listening on (\S+)`)

// startServer runs testdata/httpserver with args and returns its base URL.
func startServer(t *testing.T, name, bin string, args ...string) (string, *proc) {
	t.Helper()
	p := start(t, name, nil, bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	return "http://" + p.waitFor(t, listening, 10*time.Second)[1], p
}

func get(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b)
}

// The legacy Jaeger query API (GET /api/traces), what the Jaeger UI reads.
type (
	jTraces struct {
		Data   []jTrace `json:"data"`
		Errors []any    `json:"errors"`
	}
	jTrace struct {
		TraceID   string              `json:"traceID"`
		Spans     []jSpan             `json:"spans"`
		Processes map[string]jProcess `json:"processes"`
	}
	jSpan struct {
		TraceID       string `json:"traceID"`
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		References    []struct {
			RefType string `json:"refType"`
			TraceID string `json:"traceID"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
		StartTime uint64 `json:"startTime"` // µs since the epoch
		Duration  uint64 `json:"duration"`  // µs
		Tags      []jTag `json:"tags"`
		ProcessID string `json:"processID"`
	}
	jProcess struct {
		ServiceName string `json:"serviceName"`
		Tags        []jTag `json:"tags"`
	}
	jTag struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	}
)

// tag is the span's tag key as text ("" when absent).
func (s *jSpan) tag(key string) string {
	for _, kv := range s.Tags {
		if kv.Key == key {
			return fmt.Sprint(kv.Value)
		}
	}
	return ""
}

func (s *jSpan) String() string {
	tags := make([]string, 0, len(s.Tags))
	for _, kv := range s.Tags {
		tags = append(tags, fmt.Sprintf("%s=%v", kv.Key, kv.Value))
	}
	return fmt.Sprintf("%q span %s trace %s refs %+v duration %dµs tags [%s]",
		s.OperationName, s.SpanID, s.TraceID, s.References, s.Duration, strings.Join(tags, " "))
}

// findSpan returns the trace and span that match, or nil.
func findSpan(traces []jTrace, match func(*jSpan) bool) (*jTrace, *jSpan) {
	for i := range traces {
		for j := range traces[i].Spans {
			if s := &traces[i].Spans[j]; match(s) {
				return &traces[i], s
			}
		}
	}
	return nil, nil
}

func dump(traces []jTrace) string {
	var b strings.Builder
	for _, tr := range traces {
		fmt.Fprintf(&b, "trace %s:\n", tr.TraceID)
		for i := range tr.Spans {
			fmt.Fprintf(&b, "  %s\n", &tr.Spans[i])
		}
	}
	return b.String()
}

// serverSpan matches the server span of a request to path.
func serverSpan(path string) func(*jSpan) bool {
	return func(s *jSpan) bool { return s.tag("span.kind") == "server" && s.tag("url.path") == path }
}

// TestJaegerFanoutTrace traces two instances of the test server with one
// zerotel attached by executable, exports over OTLP/gRPC to a real Jaeger v2,
// and reads the traces back through Jaeger's query API: GET /fanout is a
// server span with its client call as CHILD_OF, GET /users/1 a lone server span.
func TestJaegerFanoutTrace(t *testing.T) {
	testutil.RequireRoot(t)
	jaeger := jaegerBinary(t)
	zerotel := testutil.BuildGo(t, "cmd/zerotel")
	server := testutil.BuildGo(t, "httpserver")
	query, otlp := startJaeger(t, jaeger)
	begin := time.Now()

	// --output json too: on failure its records tell whether zerotel saw
	// the requests at all, or the spans got lost on the way to Jaeger.
	agent := start(t, "zerotel", []string{"OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_METRICS_EXPORTER=none"},
		zerotel, "run", "--exe", server, "--output", "json",
		"--otlp-endpoint", "http://"+otlp, "--otlp-protocol", "grpc", "--service-name", "zt-e2e")
	agent.waitFor(t, regexp.MustCompile(`msg=tracing`), 30*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("zerotel output:\n%s", agent.output())
		}
	})

	back, _ := startServer(t, "backend", server)
	front, _ := startServer(t, "front", server, "-backend", back)
	if body := get(t, front+"/fanout"); !strings.Contains(body, `"id":"7"`) {
		t.Fatalf("GET /fanout answered %q, want the backend's /users/7", body)
	}
	get(t, front+"/users/1")
	time.Sleep(500 * time.Millisecond) // the ring-buffer read of the last events
	agent.interrupt(t)                 // flushes the batch span processor

	// Read back: the /fanout trace (server + client), the backend's
	// /users/7 (its own trace: no header propagation yet) and /users/1.
	q := url.Values{
		"service": {"zt-e2e"}, "limit": {"100"},
		"start": {fmt.Sprint(begin.Add(-time.Minute).UnixMicro())},
		"end":   {fmt.Sprint(time.Now().Add(time.Minute).UnixMicro())},
	}
	api := "http://" + query + "/api/traces?" + q.Encode()
	var traces []jTrace
	complete := func() bool {
		fan, _ := findSpan(traces, serverSpan("/fanout"))
		users, _ := findSpan(traces, serverSpan("/users/1"))
		backend, _ := findSpan(traces, serverSpan("/users/7"))
		return fan != nil && len(fan.Spans) >= 2 && users != nil && backend != nil
	}
	client := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for deadline := time.Now().Add(20 * time.Second); !complete(); time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger did not return the expected traces within 20s (last error %v); got:\n%s", lastErr, dump(traces))
		}
		resp, err := client.Get(api)
		if err != nil {
			lastErr = err
			continue
		}
		var r jTraces
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		switch {
		case err != nil:
			lastErr = err
		case resp.StatusCode != http.StatusOK || len(r.Errors) > 0:
			lastErr = fmt.Errorf("%s: %v", resp.Status, r.Errors)
		default:
			traces = r.Data
		}
	}
	t.Logf("traces of zt-e2e in Jaeger:\n%s", dump(traces))

	for _, tr := range traces {
		for i := range tr.Spans {
			if p := tr.Processes[tr.Spans[i].ProcessID]; p.ServiceName != "zt-e2e" {
				t.Errorf("span %s of service %q, want zt-e2e", &tr.Spans[i], p.ServiceName)
			}
		}
	}

	// GET /fanout: exactly the server span and its client call.
	fan, srv := findSpan(traces, serverSpan("/fanout"))
	if len(fan.Spans) != 2 {
		t.Errorf("/fanout trace has %d spans, want 2 (server and client)", len(fan.Spans))
	}
	if srv.OperationName != "GET /fanout" || srv.tag("http.route") != "/fanout" ||
		srv.tag("http.request.method") != "GET" || srv.tag("http.response.status_code") != "200" {
		t.Errorf("/fanout server span: %s", srv)
	}
	if len(srv.References) != 0 {
		t.Errorf("/fanout server span is not a root: %s", srv)
	}
	var cli *jSpan
	for i := range fan.Spans {
		if s := &fan.Spans[i]; s.SpanID != srv.SpanID {
			cli = s
		}
	}
	if cli == nil {
		t.Fatalf("no client span in the /fanout trace")
	}
	if cli.OperationName != "GET" || cli.tag("span.kind") != "client" ||
		cli.tag("http.response.status_code") != "200" || !strings.HasSuffix(cli.tag("url.full"), "/users/7") {
		t.Errorf("/fanout client span: %s", cli)
	}
	if len(cli.References) != 1 || cli.References[0].RefType != "CHILD_OF" ||
		cli.References[0].SpanID != srv.SpanID || cli.References[0].TraceID != srv.TraceID {
		t.Errorf("client span is not CHILD_OF the server span %s: %s", srv.SpanID, cli)
	}
	if cli.StartTime < srv.StartTime || cli.StartTime+cli.Duration > srv.StartTime+srv.Duration {
		t.Errorf("client span %d+%dµs not within the server span %d+%dµs", cli.StartTime, cli.Duration, srv.StartTime, srv.Duration)
	}

	// The backend's GET /users/7 is traced too, in a trace of its own.
	if tr, s := findSpan(traces, serverSpan("/users/7")); s.OperationName != "GET /users/{id}" || tr.TraceID == fan.TraceID {
		t.Errorf("backend span %s", s)
	}

	// GET /users/1: one server span, at least the handler's 20ms sleep.
	users, s := findSpan(traces, serverSpan("/users/1"))
	if len(users.Spans) != 1 {
		t.Errorf("/users/1 trace has %d spans, want 1", len(users.Spans))
	}
	if s.OperationName != "GET /users/{id}" || s.tag("http.route") != "/users/{id}" ||
		s.tag("http.response.status_code") != "200" || len(s.References) != 0 {
		t.Errorf("/users/1 span: %s", s)
	}
	if s.Duration < 20000 {
		t.Errorf("/users/1 span lasts %dµs, want >= 20ms (the handler sleeps 20ms)", s.Duration)
	}
}
