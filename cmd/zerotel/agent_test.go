package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
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

// agent is a zerotel process under test.
type agent struct {
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	mu      sync.Mutex
	stderr  strings.Builder
	ready   chan struct{} // closed when it logged msg=tracing
	metrics string        // Prometheus URL it logged, if any
	exited  chan struct{}
}

func zerotelBinary(t *testing.T) string {
	t.Helper()
	bin := testutil.BuildGo(t, "cmd/zerotel")
	// Other users must be able to reach it (the not-root test runs it as nobody).
	os.Chmod(filepath.Dir(bin), 0o755)
	return bin
}

var metricsURL = regexp.MustCompile(`url=(http://\S+/metrics)`)

// startAgent runs zerotel with args and env and waits until it traces.
func startAgent(t *testing.T, env []string, args ...string) *agent {
	t.Helper()
	testutil.RequireRoot(t)
	a := &agent{cmd: exec.Command(zerotelBinary(t), args...), ready: make(chan struct{}), exited: make(chan struct{})}
	a.cmd.Env = append(os.Environ(), env...)
	a.cmd.Stdout = &a.stdout
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		readyOnce := sync.OnceFunc(func() { close(a.ready) })
		for sc.Scan() {
			line := sc.Text()
			a.mu.Lock()
			a.stderr.WriteString(line + "\n")
			if m := metricsURL.FindStringSubmatch(line); m != nil {
				a.metrics = m[1]
			}
			a.mu.Unlock()
			if strings.Contains(line, "msg=tracing") {
				readyOnce()
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() { a.cmd.Process.Kill(); <-a.exited })
	select {
	case <-a.ready:
	case <-a.exited:
		t.Fatalf("zerotel %v exited before tracing:\n%s", args, a.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("zerotel %v not tracing after 30s:\n%s", args, a.logs())
	}
	return a
}

func (a *agent) logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stderr.String()
}

func (a *agent) metricsURL() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.metrics
}

// stop sends SIGINT and waits for a clean exit; it returns stdout.
func (a *agent) stop(t *testing.T) string {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("zerotel did not exit within 20s of SIGINT:\n%s", a.logs())
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("zerotel exit code %d:\n%s", code, a.logs())
	}
	return a.stdout.String()
}

// bpfIDs lists the BPF program and link ids the process holds open, from
// /proc/PID/fdinfo: exact even while other tests load programs too.
func bpfIDs(t *testing.T, pid int) (progs, links []uint32) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			var id uint32
			if _, err := fmt.Sscanf(line, "prog_id:\t%d", &id); err == nil {
				progs = append(progs, id)
			}
			if _, err := fmt.Sscanf(line, "link_id:\t%d", &id); err == nil {
				links = append(links, id)
			}
		}
	}
	return progs, links
}
