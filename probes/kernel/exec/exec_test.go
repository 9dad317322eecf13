package exec

import (
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/zerotel/zerotel/internal/testutil"
)

// traceExecs starts the exec tracer and returns a channel of its events.
func traceExecs(t *testing.T) <-chan *Event {
	t.Helper()
	testutil.RequireRoot(t)
	tr, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	return testutil.Stream[Event](t, tr)
}

// waitFor returns the first event that match accepts, or fails after 10 s.
func waitFor(t *testing.T, events <-chan *Event, what string, match func(*Event) bool) *Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no event for %s within 10s", what)
		}
	}
}

func TestExecReportsPidPpidPathArgsAndExit(t *testing.T) {
	events := traceExecs(t)
	unique := fmt.Sprintf("zt%d", time.Now().UnixNano()%1e9)
	path := filepath.Join(t.TempDir(), "cmd-"+unique)
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"alpha-" + unique, "two words", ""}
	cmd := osexec.Command(path, args...)
	err := cmd.Run()
	if ee, ok := err.(*osexec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Fatalf("want exit status 7, got %v", err)
	}
	pid := uint32(cmd.Process.Pid)

	e := waitFor(t, events, "exec of "+path, func(e *Event) bool { return e.Kind == KindExec && e.Path == path })
	if e.PID != pid || e.PPID != uint32(os.Getpid()) || e.UID != 0 || e.Failed() {
		t.Errorf("exec: pid %d ppid %d uid %d errno %v; want pid %d ppid %d uid 0 ok", e.PID, e.PPID, e.UID, e.Errno, pid, os.Getpid())
	}
	wantArgv := append([]string{path}, args...)
	if !slices.Equal(e.Args, wantArgv) || e.ArgsTruncated {
		t.Errorf("argv %q (truncated %v), want %q", e.Args, e.ArgsTruncated, wantArgv)
	}
	if want := filepath.Base(path)[:min(15, len(filepath.Base(path)))]; e.Comm != want {
		t.Errorf("comm %q, want %q", e.Comm, want)
	}
	if !e.End.After(e.Start) || time.Since(e.Start) > time.Minute {
		t.Errorf("times start %v end %v are not around now", e.Start, e.End)
	}

	x := waitFor(t, events, "exit of pid", func(x *Event) bool { return x.Kind == KindExit && x.PID == pid })
	if x.ExitCode != 7 || x.Signal != 0 || x.PPID != uint32(os.Getpid()) {
		t.Errorf("exit: code %d signal %d ppid %d, want 7 0 %d", x.ExitCode, x.Signal, x.PPID, os.Getpid())
	}
}

func TestExecMissingPathIsFailed(t *testing.T) {
	events := traceExecs(t)
	path := fmt.Sprintf("/nonexistent/zt-missing-%d", time.Now().UnixNano())
	if err := osexec.Command(path, "arg1").Run(); err == nil {
		t.Fatal("exec of a missing path succeeded")
	}
	e := waitFor(t, events, "failed exec", func(e *Event) bool { return e.Kind == KindExec && e.Path == path })
	if !e.Failed() || e.Errno != syscall.ENOENT || e.Error != "ENOENT" {
		t.Errorf("errno %v (%q), want ENOENT", e.Errno, e.Error)
	}
	if e.PPID != uint32(os.Getpid()) || !slices.Equal(e.Args, []string{path, "arg1"}) {
		t.Errorf("ppid %d args %q, want %d %q", e.PPID, e.Args, os.Getpid(), []string{path, "arg1"})
	}
}

func TestExecLongArgvIsTruncatedAndMarked(t *testing.T) {
	events := traceExecs(t)
	long := make([]string, 100)
	for i := range long {
		long[i] = fmt.Sprintf("arg%03d", i)
	}
	path := "/bin/true"
	marker := fmt.Sprintf("zt-marker-%d", time.Now().UnixNano())
	if err := osexec.Command(path, append([]string{marker}, long...)...).Run(); err != nil {
		t.Fatal(err)
	}
	e := waitFor(t, events, "exec with long argv", func(e *Event) bool {
		return e.Kind == KindExec && len(e.Args) > 1 && e.Args[1] == marker
	})
	if !e.ArgsTruncated || len(e.Args) != 64 || e.Args[63] != "arg061" {
		t.Errorf("got %d args (truncated %v), last %q; want 64, truncated, last arg061", len(e.Args), e.ArgsTruncated, e.Args[len(e.Args)-1])
	}
}
