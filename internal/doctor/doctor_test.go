package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// TestRun checks the verdicts expected on the reference machine described
// in /work/shared/KERNEL.md (kernel 6.18, BTF, lockdown=integrity,
// CONFIG_KPROBES off).
func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("doctor loads and attaches eBPF programs: run this test as root")
	}
	before := ztPrograms(t)
	for id, name := range before {
		t.Logf("already loaded before Run (not ours): %s (id %d)", name, id)
	}

	r := Run(context.Background())

	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", text.String())

	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, &back) {
		t.Errorf("JSON round trip changed the report:\n%+v\n%+v", r, &back)
	}

	var names []string
	for _, p := range r.Probes {
		names = append(names, p.Name)
	}
	wantNames := []string{"tracepoint", "raw_tracepoint", "tp_btf", "kprobe", "fentry", "uprobe",
		"perf_event", "ringbuf", "tc", "sockops", "sk_msg", "bpf_probe_write_user"}
	if !reflect.DeepEqual(names, wantNames) {
		t.Errorf("probe names = %v, want %v", names, wantNames)
	}

	want := map[string]bool{
		"tracepoint": true, "uprobe": true, "ringbuf": true, "raw_tracepoint": true,
		"tp_btf": true, "perf_event": true,
		"kprobe": false, "bpf_probe_write_user": false,
	}
	for _, p := range r.Probes {
		w, ok := want[p.Name]
		if !ok {
			continue
		}
		if p.Available != w {
			t.Errorf("%s: available=%v, want %v (error %q)", p.Name, p.Available, w, p.Error)
		}
		if !p.Available && p.Error == "" {
			t.Errorf("%s: unavailable without an error", p.Name)
		}
	}
	if !r.BTF.Available || r.KernelRelease == "" || r.Lockdown.Mode == "unknown" || r.Tracefs.Path == "" {
		t.Errorf("host checks incomplete: %+v", r)
	}
	if code := r.ExitCode(); code != 0 {
		t.Errorf("ExitCode() = %d, problems: %q", code, r.Problems())
	}

	// Other zerotel components name their programs "zt_..." too and may be
	// loaded by tests running in parallel, so only names doctor used count.
	// The kernel may free programs a little after their last fd is closed
	// (RCU, workqueues), so give it a moment before calling it a leak.
	var left []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		for id, name := range ztPrograms(t) {
			if _, ours := loadedNames.Load(name); ours && before[id] == "" {
				left = append(left, name)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("programs left loaded after Run: %v", left)
	}
	var loaded []string
	loadedNames.Range(func(k, _ any) bool { loaded = append(loaded, k.(string)); return true })
	for _, n := range loaded {
		if !strings.HasPrefix(n, "zt_") || len(n) > 15 {
			t.Errorf("program name %q: want prefix zt_ and at most 15 characters", n)
		}
	}
	if len(loaded) != len(r.Probes) { // each check loads one program of its own
		t.Errorf("%d program names recorded for %d checks: %v", len(loaded), len(r.Probes), loaded)
	}
}

// ztPrograms lists loaded BPF programs whose names start with "zt_".
func ztPrograms(t *testing.T) map[ebpf.ProgramID]string {
	t.Helper()
	out := map[ebpf.ProgramID]string{}
	id := ebpf.ProgramID(0)
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return out
		}
		if err != nil {
			t.Fatalf("ProgramGetNextID: %v", err)
		}
		id = next
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded in the meantime
		}
		info, err := prog.Info()
		prog.Close()
		if err == nil && strings.HasPrefix(info.Name, "zt_") {
			out[id] = info.Name
		}
	}
}

func TestParseLockdown(t *testing.T) {
	for in, want := range map[string]string{
		"none [integrity] confidentiality\n": "integrity",
		"[none] integrity confidentiality":   "none",
		"none integrity [confidentiality]":   "confidentiality",
	} {
		if got, ok := parseLockdown(in); !ok || got != want {
			t.Errorf("parseLockdown(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, ok := parseLockdown("garbage"); ok {
		t.Error("parseLockdown accepted a line without a bracketed mode")
	}
}

func TestFeatures(t *testing.T) {
	probes := []Probe{
		{Name: "tracepoint", Available: true},
		{Name: "ringbuf", Available: true},
		{Name: "raw_tracepoint", Available: true},
		{Name: "tp_btf", Error: "x"},
		{Name: "uprobe", Error: "x"},
	}
	got := map[string]Feature{}
	for _, f := range evaluateFeatures(probes) {
		got[f.Name] = f
	}
	for name, want := range map[string]bool{
		"exec tracing": true, "off-cpu profiling": true, // raw_tracepoint alone is enough
		"go runtime metrics": false, "cpu profiling": false, "trace context propagation": false,
	} {
		f := got[name]
		if f.Available != want || (!want && f.Reason == "") {
			t.Errorf("%s: %+v, want available=%v", name, f, want)
		}
	}
}

// TestNotPrivileged checks the report of a process without capabilities
// (built by hand: it cannot be produced as root).
func TestNotPrivileged(t *testing.T) {
	r := &Report{EUID: 1000, BTF: BTF{Available: true, Path: btfPath},
		Probes: []Probe{{Name: "tracepoint", Available: true}, {Name: "ringbuf", Available: true}}}
	if r.ExitCode() != 2 {
		t.Fatalf("ExitCode() = %d, want 2", r.ExitCode())
	}
	p := r.Problems()
	if len(p) != 1 || !strings.Contains(p[0], "not root and CAP_BPF") ||
		!strings.Contains(p[0], "run as root, or grant CAP_BPF and CAP_PERFMON") {
		t.Errorf("Problems() = %q", p)
	}
}
