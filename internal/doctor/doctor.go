// Package doctor implements `zerotel doctor`: it finds out what this
// machine's kernel allows (by really loading and attaching tiny eBPF
// programs, not by guessing from versions) and what zerotel can therefore do.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Report is the outcome of Run. It is meant to be marshalled with
// encoding/json as is.
type Report struct {
	KernelRelease string       `json:"kernel_release"`
	Arch          string       `json:"arch"`
	EUID          int          `json:"euid"`
	Capabilities  Capabilities `json:"capabilities"`
	BTF           BTF          `json:"btf"`
	Lockdown      Lockdown     `json:"lockdown"`
	Tracefs       Tracefs      `json:"tracefs"`
	Probes        []Probe      `json:"probes"`
	Features      []Feature    `json:"features"`
	// NeverRequired lists attach kinds zerotel deliberately does without,
	// so their absence is never a problem.
	NeverRequired []string `json:"never_required"`
	// Errors holds failures of the host checks that have no field of their
	// own (uname, internal errors).
	Errors []string `json:"errors,omitempty"`
}

// Feature is one zerotel capability and the attach kinds it depends on.
type Feature struct {
	Name      string   `json:"name"`
	Available bool     `json:"available"`
	Needs     []string `json:"needs"`
	// AnyOf means one of Needs is enough (otherwise all are needed).
	AnyOf  bool   `json:"any_of,omitempty"`
	Reason string `json:"reason,omitempty"`
}

var featureNeeds = []Feature{
	{Name: "exec tracing", Needs: []string{"tracepoint", "ringbuf"}},
	{Name: "tcp tracing", Needs: []string{"tracepoint", "ringbuf"}},
	{Name: "go http/grpc/sql tracing", Needs: []string{"uprobe", "ringbuf"}},
	{Name: "go runtime metrics", Needs: []string{"uprobe", "ringbuf"}},
	{Name: "cpu profiling", Needs: []string{"perf_event"}},
	{Name: "off-cpu profiling", Needs: []string{"tp_btf", "raw_tracepoint"}, AnyOf: true},
	{Name: "trace context propagation", Needs: []string{"sockops", "sk_msg"}},
}

// neverRequired: zerotel is designed without these (often missing or
// locked down on production kernels).
var neverRequired = []string{"kprobe", "fentry", "bpf_probe_write_user"}

// Run performs every check. It never panics; each check records its own error.
func Run(ctx context.Context) *Report {
	r := &Report{EUID: os.Geteuid(), NeverRequired: neverRequired}
	r.guard("kernel", func() {
		var err error
		if r.KernelRelease, r.Arch, err = kernelRelease(); err != nil {
			r.KernelRelease = "unknown"
			r.Errors = append(r.Errors, "uname: "+err.Error())
		}
	})
	r.guard("capabilities", func() { r.Capabilities = checkCapabilities() })
	r.guard("btf", func() { r.BTF = checkBTF() })
	r.guard("lockdown", func() { r.Lockdown = checkLockdown() })
	// Before the probes: the tracepoint check reads ids from tracefs.
	r.guard("tracefs", func() { r.Tracefs = checkTracefs() })

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; this is a
	// no-op on newer ones. A failure shows up in the probes themselves.
	_ = rlimit.RemoveMemlock()

	env := &probeEnv{
		lockdown:   r.Lockdown.Mode,
		privileged: r.privileged(),
		root:       r.EUID == 0,
		netAdmin:   r.Capabilities.NetAdmin || r.Capabilities.Error != "" && r.EUID == 0,
	}
	for _, pc := range probeChecks {
		p := Probe{Name: pc.name}
		err := ctx.Err()
		if err == nil {
			err = safely(func() error { return pc.check(env) })
		}
		if err != nil {
			p.Error = r.explain(pc.name, err, env)
		} else {
			p.Available = true
		}
		r.Probes = append(r.Probes, p)
	}
	r.Features = evaluateFeatures(r.Probes)
	return r
}

// guard runs a host check, turning a panic into a recorded error.
func (r *Report) guard(what string, f func()) {
	if err := safely(func() error { f(); return nil }); err != nil {
		r.Errors = append(r.Errors, what+": "+err.Error())
	}
}

func safely(f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("internal error: %v", v)
		}
	}()
	return f()
}

// privileged: CAP_BPF+CAP_PERFMON is the minimum on 5.8+, CAP_SYS_ADMIN
// covers older kernels. If capget failed we can only trust the euid.
func (r *Report) privileged() bool {
	c := r.Capabilities
	if c.Error != "" {
		return r.EUID == 0
	}
	return c.SysAdmin || (c.BPF && c.Perfmon)
}

// explain turns an error into one short line a user can act on.
func (r *Report) explain(probe string, err error, env *probeEnv) string {
	denied := errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return "not checked: " + err.Error()
	case denied && !env.privileged:
		return "permission denied: run as root, or grant CAP_BPF and CAP_PERFMON"
	case denied && !env.netAdmin && (probe == "tc" || probe == "sockops" || probe == "sk_msg"):
		return "permission denied: network programs also need CAP_NET_ADMIN"
	case denied && !env.root:
		// Capabilities are there but not everything honours them (tracefs
		// files are root-only, some perf PMUs want more).
		return "permission denied without root (CAP_BPF+CAP_PERFMON not enough): " + shortError(err)
	case probe == "tracepoint" && r.Tracefs.Error != "":
		return r.Tracefs.Error
	case errors.Is(err, unix.EPERM):
		// Root with all capabilities (and MEMLOCK raised): the kernel's
		// policy refuses this, so cilium/ebpf's MEMLOCK hint would mislead.
		msg := strings.Replace(shortError(err), " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)", "", 1)
		return fmt.Sprintf("%s (kernel policy; lockdown=%s)", msg, env.lockdown)
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && len(ve.Log) > 0 {
		// The last verifier line says why; the full log is noise here.
		return fmt.Sprintf("refused by the verifier: %s", lastLine(ve.Log))
	}
	return shortError(err)
}

// shortError drops cilium/ebpf's long wrapping chains where a file
// operation failed: "open /path: permission denied" says it all.
func shortError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Error()
	}
	return firstLine(err.Error())
}

func lastLine(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(lines[i]); s != "" && !strings.HasPrefix(s, "processed ") {
			return s
		}
	}
	return ""
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func evaluateFeatures(probes []Probe) []Feature {
	byName := map[string]Probe{}
	for _, p := range probes {
		byName[p.Name] = p
	}
	var out []Feature
	for _, f := range featureNeeds {
		f.Needs = append([]string(nil), f.Needs...)
		var missing []string
		for _, n := range f.Needs {
			if !byName[n].Available {
				missing = append(missing, n)
			}
		}
		switch {
		case f.AnyOf && len(missing) == len(f.Needs):
			f.Reason = "needs one of " + strings.Join(f.Needs, ", ") + "; none is available"
		case !f.AnyOf && len(missing) > 0:
			f.Reason = "needs " + strings.Join(missing, ", ") + " (unavailable)"
		default:
			f.Available = true
		}
		out = append(out, f)
	}
	return out
}

// Problems lists why the core of zerotel cannot work here (empty if it can).
func (r *Report) Problems() []string {
	var out []string
	if !r.privileged() {
		switch {
		case r.Capabilities.Error != "":
			out = append(out, "not root and capabilities unreadable ("+r.Capabilities.Error+"): run as root, or grant CAP_BPF and CAP_PERFMON")
		case r.EUID == 0:
			out = append(out, "root, but "+missingCaps(r.Capabilities)+" not effective (restricted container?): grant CAP_BPF and CAP_PERFMON")
		default:
			out = append(out, "not root and "+missingCaps(r.Capabilities)+" missing: run as root, or grant CAP_BPF and CAP_PERFMON")
		}
	}
	if !r.BTF.Available {
		out = append(out, "no BTF at "+r.BTF.Path)
	}
	for _, name := range []string{"tracepoint", "ringbuf"} {
		if p := r.probe(name); !p.Available {
			out = append(out, name+" unavailable: "+p.Error)
		}
	}
	return out
}

func missingCaps(c Capabilities) string {
	var m []string
	if !c.BPF {
		m = append(m, "CAP_BPF")
	}
	if !c.Perfmon {
		m = append(m, "CAP_PERFMON")
	}
	return strings.Join(m, " and ")
}

func (r *Report) probe(name string) Probe {
	for _, p := range r.Probes {
		if p.Name == name {
			return p
		}
	}
	return Probe{Name: name, Error: "not checked"}
}

// ExitCode is 0 when the core works (privileges, BTF, tracepoint, ringbuf),
// 2 otherwise.
func (r *Report) ExitCode() int {
	if len(r.Problems()) > 0 {
		return 2
	}
	return 0
}
