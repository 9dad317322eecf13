package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

type execRecord struct {
	Kind     string
	PID      uint32
	PPID     uint32
	Comm     string
	Path     string
	Args     []string
	Error    string
	ExitCode int `json:"exit_code"`
}

func parseExecRecords(t *testing.T, out string) []execRecord {
	t.Helper()
	var recs []execRecord
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r execRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("output line is not JSON: %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// script writes an executable shell script that exits with code.
func script(t *testing.T, name string, code int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, fmt.Appendf(nil, "#!/bin/sh\nexit %d\n", code), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTraceExecJSONWithCommFilter runs the agent with --comm and checks
// that exactly the matching process is reported, with its exec and exit.
func TestTraceExecJSONWithCommFilter(t *testing.T) {
	name := fmt.Sprintf("zt-%d", time.Now().UnixNano()%1e8)
	path := script(t, name, 3)
	a := startAgent(t, nil, "trace", "exec", "--output", "json", "--comm", name)
	cmd := exec.Command(path, "first", "second")
	if err := cmd.Run(); err == nil {
		t.Fatal("script exited 0, want 3")
	}
	exec.Command("/bin/true").Run() // filtered out
	time.Sleep(500 * time.Millisecond)
	recs := parseExecRecords(t, a.stop(t))
	if len(recs) != 2 {
		t.Fatalf("want 2 records (exec, exit) for comm %s, got %+v", name, recs)
	}
	pid := uint32(cmd.Process.Pid)
	e, x := recs[0], recs[1]
	if e.Kind != "exec" || e.PID != pid || e.PPID != uint32(os.Getpid()) || e.Path != path || !slices.Equal(e.Args, []string{path, "first", "second"}) || e.Error != "" {
		t.Errorf("exec record %+v", e)
	}
	if x.Kind != "exit" || x.PID != pid || x.ExitCode != 3 {
		t.Errorf("exit record %+v", x)
	}
}

// TestUnreachableCollectorKeepsTracing points OTLP at a closed port: the
// console output goes on, the agent exits cleanly, and the dropped spans are
// counted on /metrics.
func TestUnreachableCollectorKeepsTracing(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	a := startAgent(t, []string{"OTEL_EXPORTER_OTLP_TIMEOUT=300", "OTEL_BSP_SCHEDULE_DELAY=50", "OTEL_METRICS_EXPORTER=none"},
		"trace", "exec", "--output", "json", "--metrics-addr", "127.0.0.1:0",
		"--otlp-endpoint", "http://"+closed, "--otlp-protocol", "grpc")
	marker := fmt.Sprintf("zt-unreachable-%d", time.Now().UnixNano())
	deadline := time.Now().Add(20 * time.Second)
	execs := 0
	for time.Now().Before(deadline) {
		exec.Command("/bin/true", marker).Run()
		execs++
		if scrape(t, a.metricsURL()).sum(`zerotel_spans_dropped_total{.*reason="export_failed".*}`) > 0 && execs >= 10 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if time.Now().After(deadline) {
		t.Fatalf("no dropped spans counted after 20s:\n%s", a.logs())
	}
	// Still tracing after the drops began.
	exec.Command("/bin/true", marker, "after").Run()
	time.Sleep(300 * time.Millisecond)
	out := a.stop(t)
	seen, after := 0, false
	for _, r := range parseExecRecords(t, out) {
		if r.Kind == "exec" && len(r.Args) > 1 && r.Args[1] == marker {
			seen++
			after = after || len(r.Args) == 3
		}
	}
	if seen != execs+1 || !after {
		t.Errorf("console reported %d of %d execs (after drops: %v)", seen, execs+1, after)
	}
	if !strings.Contains(a.logs(), "spans dropped") {
		t.Errorf("no 'spans dropped' warning at exit:\n%s", a.logs())
	}
}
