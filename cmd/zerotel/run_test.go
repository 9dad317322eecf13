package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/zerotel/zerotel/internal/testutil"
)

// httpRecord is one line of `zerotel run --output json`.
type httpRecord struct {
	Kind    string
	PID     uint32
	TraceID string `json:"trace_id"`
	SpanID  string `json:"span_id"`
	Parent  string `json:"parent_span_id"`
	Method  string
	Path    string
	Pattern string
	Host    string
	Status  int
	// NoResponse: a client call that failed before a response.
	NoResponse bool `json:"no_response"`
}

func parseHTTPRecords(t *testing.T, out string) []httpRecord {
	t.Helper()
	var recs []httpRecord
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r httpRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("output line is not JSON: %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// startServer runs the test HTTP server and returns its base URL.
func startServer(t *testing.T, bin string) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(bin)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + strings.TrimSpace(strings.TrimPrefix(line, "listening on ")), cmd
}

func get(t *testing.T, url string, header ...string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

var listening = regexp.MustCompile(`listening on (\S+)`)

// TestRunCommandTracesItsFirstRequest starts the server through zerotel:
// the probes are attached before it runs, so its very first request is a span.
func TestRunCommandTracesItsFirstRequest(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildGo(t, "httpserver")
	a := startAgent(t, nil, "run", "--output", "json", "--", bin, "-addr", "127.0.0.1:0")
	var base string
	for deadline := time.Now().Add(10 * time.Second); base == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := listening.FindStringSubmatch(a.logs()); m != nil {
			base = "http://" + m[1]
		}
	}
	if base == "" {
		t.Fatalf("server did not start under zerotel:\n%s", a.logs())
	}
	get(t, base+"/users/1")
	time.Sleep(300 * time.Millisecond)
	recs := parseHTTPRecords(t, a.stop(t))
	if len(recs) != 1 || recs[0].Kind != "server" || recs[0].Path != "/users/1" || recs[0].Pattern != "GET /users/{id}" || recs[0].Status != 200 {
		t.Fatalf("want the first request as one server span, got %+v", recs)
	}
	if recs[0].PID != uint32(a.cmd.Process.Pid) && recs[0].PID == 0 {
		t.Errorf("pid %d", recs[0].PID)
	}
}

// TestRunExeFollowsRestartsAndExports attaches by executable: a running
// server, then a restarted one, are traced; spans reach an OTLP receiver
// and durations reach Prometheus.
func TestRunExeFollowsRestartsAndExports(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildGo(t, "httpserver")
	rcv := grpcReceiver(t)
	first, firstCmd := startServer(t, bin)
	a := startAgent(t, []string{"OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_METRICS_EXPORTER=none"},
		"run", "--exe", bin, "--output", "json", "--metrics-addr", "127.0.0.1:0",
		"--otlp-endpoint", rcv.URL, "--otlp-protocol", "grpc", "--service-name", "zt-run")
	get(t, first+"/users/1")
	firstCmd.Process.Kill()
	firstCmd.Wait()
	second, secondCmd := startServer(t, bin) // started after zerotel
	get(t, second+"/users/2", "traceparent", "00-11111111111111111111111111111111-2222222222222222-01")
	time.Sleep(500 * time.Millisecond)
	m := scrape(t, a.metricsURL())
	recs := parseHTTPRecords(t, a.stop(t))

	if len(recs) != 2 || recs[0].PID != uint32(firstCmd.Process.Pid) || recs[0].Path != "/users/1" ||
		recs[1].PID != uint32(secondCmd.Process.Pid) || recs[1].Path != "/users/2" {
		t.Fatalf("want /users/1 from pid %d and /users/2 from pid %d, got %+v", firstCmd.Process.Pid, secondCmd.Process.Pid, recs)
	}
	if got := m.sum(`http_server_request_duration_seconds_count{.*http_route="/users/\{id\}".*}`); got != 2 {
		t.Errorf("http_server_request_duration_seconds_count for /users/{id} = %v, want 2\n%s", got, m)
	}
	// The handler sleeps 20 ms: both requests in the (0.01, 0.025] bucket.
	le := func(b string) float64 {
		return m.sum(`http_server_request_duration_seconds_bucket{.*http_route="/users/\{id\}".*le="` + regexp.QuoteMeta(b) + `".*}`)
	}
	if le("0.01") != 0 || le("0.025") != 2 || le("+Inf") != 2 {
		t.Errorf("buckets le=0.01: %v, le=0.025: %v, le=+Inf: %v; want 0, 2, 2", le("0.01"), le("0.025"), le("+Inf"))
	}
	if sum := m.sum(`http_server_request_duration_seconds_sum{.*http_route="/users/\{id\}".*}`); sum < 0.04 || sum > 0.05 {
		t.Errorf("duration sum %v s, want 2 x ~20 ms", sum)
	}

	spans, res := rcv.snapshot()
	var server []*tracepb.Span
	for i, s := range spans {
		if s.Name == "GET /users/{id}" && s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			server = append(server, s)
			if res[i]["service.name"] != "zt-run" {
				t.Errorf("service.name %q", res[i]["service.name"])
			}
		}
	}
	if len(server) != 2 {
		t.Fatalf("want 2 server spans over OTLP, got %d of %d", len(server), len(spans))
	}
	cont := server[1]
	if fmt.Sprintf("%x", cont.TraceId) != "11111111111111111111111111111111" || fmt.Sprintf("%x", cont.ParentSpanId) != "2222222222222222" ||
		fmt.Sprintf("%x", cont.SpanId) != recs[1].SpanID {
		t.Errorf("continued span: trace %x parent %x span %x; want the traceparent's and span %s", cont.TraceId, cont.ParentSpanId, cont.SpanId, recs[1].SpanID)
	}
	if attrs(cont)["http.route"] != "/users/{id}" || attrs(cont)["url.path"] != "/users/2" {
		t.Errorf("attributes %v", attrs(cont))
	}
}

// TestRunPidAndSampling attaches to one process by pid with a sampler that
// keeps only requests whose caller sampled them; all still count in metrics.
func TestRunPidAndSampling(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildGo(t, "httpserver")
	base, cmd := startServer(t, bin)
	a := startAgent(t, []string{"OTEL_TRACES_SAMPLER=parentbased_always_off"},
		"run", "--pid", fmt.Sprint(cmd.Process.Pid), "--output", "json", "--metrics-addr", "127.0.0.1:0")
	get(t, base+"/users/1")
	get(t, base+"/users/2", "traceparent", "00-33333333333333333333333333333333-4444444444444444-01")
	get(t, base+"/users/3", "traceparent", "00-55555555555555555555555555555555-6666666666666666-00")
	time.Sleep(500 * time.Millisecond)
	m := scrape(t, a.metricsURL())
	recs := parseHTTPRecords(t, a.stop(t))
	if len(recs) != 1 || recs[0].Path != "/users/2" || recs[0].TraceID != "33333333333333333333333333333333" {
		t.Errorf("want only the sampled caller's request as a span, got %+v", recs)
	}
	if got := m.sum(`http_server_request_duration_seconds_count{.*}`); got != 3 {
		t.Errorf("duration count %v, want 3 (unsampled requests count too)", got)
	}
}

// TestRunClientBinary traces the requests a Go client program makes,
// including one that fails without a response.
func TestRunClientBinary(t *testing.T) {
	testutil.RequireRoot(t)
	base, _ := startServer(t, testutil.BuildGo(t, "httpserver"))
	client := testutil.BuildGo(t, "httpclient")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()
	a := startAgent(t, nil, "run", "--output", "json", "--", client, "GET", base+"/users/5?x=1", "POST", base+"/items", "hello",
		"GET", closed+"/refused")
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("zerotel did not exit with its command")
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d:\n%s", code, a.logs())
	}
	recs := parseHTTPRecords(t, a.stdout.String())
	if len(recs) != 3 || recs[0].Kind != "client" || recs[0].Method != "GET" || recs[0].Status != 200 || recs[0].Path != "/users/5" ||
		recs[1].Method != "POST" || recs[1].Status != 201 || recs[0].Parent != "0000000000000000" ||
		recs[2].Path != "/refused" || recs[2].Status != 0 || !recs[2].NoResponse {
		t.Errorf("client spans %+v", recs)
	}
}

// TestRunNothingToTrace: a non-Go binary and a Go binary without net/http
// are a clear message and a clean exit.
func TestRunNothingToTrace(t *testing.T) {
	testutil.RequireRoot(t)
	for bin, want := range map[string]string{
		"/bin/true":                    "not a Go binary",
		testutil.BuildGo(t, "tcppeer"): "does not use net/http",
	} {
		code, out := run(t, nil, "run", "--exe", bin)
		if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, bin) {
			t.Errorf("run --exe %s: exit %d, output %q; want exit 0 and %q", bin, code, out, want)
		}
		assertNoPanic(t, out)
	}
}

// TestRunExportsMetricsOverOTLP: the server duration histogram, which the
// kernel keeps, reaches an OTLP receiver with every request counted.
func TestRunExportsMetricsOverOTLP(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildGo(t, "httpserver")
	rcv := httpReceiver(t)
	base, _ := startServer(t, bin)
	a := startAgent(t, []string{"OTEL_METRIC_EXPORT_INTERVAL=200", "OTEL_TRACES_SAMPLER=always_off"},
		"run", "--exe", bin, "--output", "none", "--otlp-endpoint", rcv.URL, "--otlp-protocol", "http/protobuf")
	for i := range 3 {
		get(t, fmt.Sprintf("%s/users/%d", base, i))
	}
	deadline := time.Now().Add(10 * time.Second)
	for rcv.histCount("http.server.request.duration", "/users/{id}") != 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	a.stop(t)
	if got := rcv.histCount("http.server.request.duration", "/users/{id}"); got != 3 {
		t.Errorf("http.server.request.duration count over OTLP = %d, want 3 (sampling off: metrics only)", got)
	}
}
