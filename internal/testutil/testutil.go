// Package testutil holds what zerotel's tests share: the root check and
// building the small Go programs under testdata/ that the tests trace.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// RequireRoot skips t unless it runs as root: loading BPF programs needs it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs into the kernel (run the tests with sudo; CI runs as root)")
	}
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// BuildGo builds the Go program in testdata/<name>, or the repository
// package <name> when it contains a slash ("cmd/zerotel"), with extra go
// build flags, once per test binary, and returns its path.
func BuildGo(t testing.TB, name string, flags ...string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	key := name + " " + filepath.Join(flags...)
	if p, ok := built[key]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "zerotel-test-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(name))
	// -buildvcs=false: the tests build inside a checkout another user may own.
	args := append([]string{"build", "-buildvcs=false", "-o", out}, flags...)
	pkg := "./testdata/" + name
	if strings.Contains(name, "/") {
		pkg = "./" + name
	}
	args = append(args, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, b)
	}
	built[key] = out
	return out
}
