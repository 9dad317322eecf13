package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/zerotel/zerotel/internal/testutil"
)

// run runs zerotel and returns its exit code and combined output.
func run(t *testing.T, cred *syscall.Credential, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(zerotelBinary(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func assertNoPanic(t *testing.T, out string) {
	t.Helper()
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Errorf("output has a panic or stack trace:\n%s", out)
	}
}

func TestNotRootIsAClearErrorWithExitCode2(t *testing.T) {
	testutil.RequireRoot(t) // to switch to an unprivileged user
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, args := range [][]string{{"trace", "exec"}, {"trace", "tcp"}, {"doctor"}} {
		code, out := run(t, nobody, args...)
		if code != 2 {
			t.Errorf("%v as nobody: exit %d, want 2\n%s", args, code, out)
		}
		if !strings.Contains(out, "root") || !strings.Contains(out, "CAP_BPF") {
			t.Errorf("%v as nobody: output does not say root / CAP_BPF is needed:\n%s", args, out)
		}
		assertNoPanic(t, out)
	}
}

func TestBadInputIsAClearError(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"trace", "tcp", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"trace", "exec", "--output", "xml"}, `unknown output format "xml"`},
		{[]string{"trace", "exec", "--duration", "soon"}, `invalid argument "soon"`},
		{[]string{"trace", "exec", "extra"}, `unknown command "extra"`},
		{[]string{"run", "--exe", "/nonexistent/zt"}, "--exe /nonexistent/zt: stat /nonexistent/zt: no such file or directory"},
		{[]string{"run", "--pid", "999999999"}, "--pid 999999999: no such process"},
		{[]string{"run"}, "nothing to trace: give --exe PATH, --pid N or -- COMMAND"},
		{[]string{"run", "somearg"}, "put the command to start after --"},
		{[]string{"run", "--", "/nonexistent/zt"}, `cannot run "/nonexistent/zt"`},
	} {
		code, out := run(t, nil, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, output %q; want exit 2 and %q", tc.args, code, out, tc.want)
		}
		assertNoPanic(t, out)
	}
}

func TestDoctorJSON(t *testing.T) {
	testutil.RequireRoot(t)
	code, out := run(t, nil, "doctor", "--json")
	if code != 0 {
		t.Fatalf("doctor --json exit %d:\n%s", code, out)
	}
	var r struct {
		Probes []struct {
			Name      string
			Available bool
		}
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("doctor --json is not JSON: %v\n%s", err, out)
	}
	got := map[string]bool{}
	for _, p := range r.Probes {
		got[p.Name] = p.Available
	}
	for name, want := range map[string]bool{"tracepoint": true, "uprobe": true, "ringbuf": true, "kprobe": false, "bpf_probe_write_user": false} {
		if avail, ok := got[name]; !ok || avail != want {
			t.Errorf("doctor: %s available=%v (reported: %v), want %v", name, avail, ok, want)
		}
	}
}
