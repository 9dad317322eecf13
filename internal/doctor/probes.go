package doctor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Probe is one attach kind and whether a real load+attach worked here.
type Probe struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Error     string `json:"error,omitempty"`
}

// probeEnv is what a check needs to know about the host to explain errors.
type probeEnv struct {
	lockdown   string
	privileged bool
	root       bool
	netAdmin   bool
}

// probeChecks is the fixed list of attach kinds, in report order. Each
// check really loads and attaches a tiny program and closes everything
// before returning; names of everything we load start with "zt_" so a test
// can prove nothing stays behind.
var probeChecks = []struct {
	name  string
	check func(*probeEnv) error
}{
	{"tracepoint", checkTracepoint},
	{"raw_tracepoint", checkRawTracepoint},
	{"tp_btf", checkTPBTF},
	{"kprobe", checkKprobe},
	{"fentry", checkFentry},
	{"uprobe", checkUprobe},
	{"perf_event", checkPerfEvent},
	{"ringbuf", checkRingbuf},
	{"tc", checkTC},
	{"sockops", checkSockops},
	{"sk_msg", checkSkMsg},
	{"bpf_probe_write_user", checkProbeWriteUser},
}

// returnImm is the smallest valid program: return v.
func returnImm(v int32) asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, v), asm.Return()}
}

func load(name string, typ ebpf.ProgramType, insns asm.Instructions) (*ebpf.Program, error) {
	return loadSpec(&ebpf.ProgramSpec{Name: name, Type: typ, Instructions: insns})
}

// loadedNames records the name of every program doctor has tried to load,
// so a test can look for leftovers of exactly these (other zerotel
// components also use the "zt_" prefix and may be loaded concurrently).
var loadedNames sync.Map

func loadSpec(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	loadedNames.Store(spec.Name, true)
	// GPL: some helpers (bpf_probe_write_user, many tracing ones) are
	// GPL-only; another license would fail checks for the wrong reason.
	spec.License = "GPL"
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	return prog, nil
}

func attachAndClose(l link.Link, err error) error {
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return l.Close()
}

func checkTracepoint(*probeEnv) error {
	prog, err := load("zt_tracepoint", ebpf.TracePoint, returnImm(0))
	if err != nil {
		return err
	}
	defer prog.Close()
	return attachAndClose(link.Tracepoint("syscalls", "sys_enter_getppid", prog, nil))
}

func checkRawTracepoint(*probeEnv) error {
	prog, err := load("zt_raw_tp", ebpf.RawTracepoint, returnImm(0))
	if err != nil {
		return err
	}
	defer prog.Close()
	return attachAndClose(link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog}))
}

func checkTPBTF(*probeEnv) error {
	prog, err := loadSpec(&ebpf.ProgramSpec{
		Name: "zt_tp_btf", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
		AttachTo: "sys_enter", Instructions: returnImm(0),
	})
	if err != nil {
		return err
	}
	defer prog.Close()
	return attachAndClose(link.AttachTracing(link.TracingOptions{Program: prog}))
}

func checkKprobe(*probeEnv) error {
	prog, err := load("zt_kprobe", ebpf.Kprobe, returnImm(0))
	if err != nil {
		return err
	}
	defer prog.Close()
	// cilium/ebpf adds the arch syscall prefix (__x64_) itself.
	l, err := link.Kprobe("sys_getppid", prog, nil)
	if err != nil && noKprobeSupport() {
		return errors.New("kprobes not supported by this kernel (CONFIG_KPROBES off?)")
	}
	return attachAndClose(l, err)
}

// noKprobeSupport tells "the kernel has no kprobes at all" apart from a
// failure on one symbol: neither the perf kprobe PMU nor tracefs
// kprobe_events exist without CONFIG_KPROBES.
func noKprobeSupport() bool {
	_, pmu := os.Stat("/sys/bus/event_source/devices/kprobe")
	_, tfs1 := os.Stat("/sys/kernel/tracing/kprobe_events")
	_, tfs2 := os.Stat("/sys/kernel/debug/tracing/kprobe_events")
	return pmu != nil && tfs1 != nil && tfs2 != nil
}

// fentryTargets are tried in order; the first with BTF is used. Tiny
// syscalls like getppid often have no BTF func entry.
var fentryTargets = []string{"do_sys_openat2", "vfs_read"}

func checkFentry(env *probeEnv) error {
	var prog *ebpf.Program
	var err error
	for _, target := range fentryTargets {
		prog, err = loadSpec(&ebpf.ProgramSpec{
			Name: "zt_fentry", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry,
			AttachTo: target, Instructions: returnImm(0),
		})
		if !errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
	}
	if err == nil {
		defer prog.Close()
		err = attachAndClose(link.AttachTracing(link.TracingOptions{Program: prog}))
	}
	if errors.Is(err, unix.EPERM) && env.privileged {
		// We have the capabilities, so the kernel itself refuses to let BPF
		// patch function entries (it says so at load time, without a log).
		return errors.New("permission denied: this kernel refuses fentry (ftrace function attach not allowed)")
	}
	return err
}

func checkPerfEvent(*probeEnv) error {
	prog, err := load("zt_perf_event", ebpf.PerfEvent, returnImm(0))
	if err != nil {
		return err
	}
	defer prog.Close()

	// A software cpu-clock sampling event on CPU 0, left disabled: it never
	// fires, so attaching costs nothing. Hardware counters are often absent
	// in VMs; zerotel's profiler uses cpu-clock for that reason.
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample: 10_000_000, // sample period: 10ms of cpu time
		Bits:   unix.PerfBitDisabled,
	}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("perf_event_open(cpu-clock, cpu 0): %w", err)
	}
	defer unix.Close(fd)

	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
	if err == nil {
		return l.Close()
	}
	// Kernels before 5.15 have no perf_event bpf_link; the ioctl is the old
	// way, undone by closing the event fd (deferred above).
	if ierr := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_BPF, prog.FD()); ierr != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return nil
}

func checkRingbuf(*probeEnv) error {
	if err := features.HaveMapType(ebpf.RingBuf); errors.Is(err, ebpf.ErrNotSupported) {
		return errors.New("BPF ring buffer not supported by this kernel (needs 5.8+)")
	}
	rb, err := ebpf.NewMap(&ebpf.MapSpec{Name: "zt_ringbuf", Type: ebpf.RingBuf, MaxEntries: 4096})
	if err != nil {
		return fmt.Errorf("create ringbuf map: %w", err)
	}
	defer rb.Close()
	// bpf_ringbuf_output(rb, &zero, 8, 0): the verifier checks the map type
	// and helper together, which is what zerotel's programs rely on.
	prog, err := load("zt_ringbuf", ebpf.TracePoint, asm.Instructions{
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord), // u64 zero on the stack
		asm.LoadMapPtr(asm.R1, rb.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.Mov.Imm(asm.R3, 8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	})
	if err != nil {
		return err
	}
	return prog.Close()
}

func checkTC(*probeEnv) error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("loopback interface: %w", err)
	}
	// TCX_NEXT (-1) hands every packet on unchanged, so loopback traffic is
	// not disturbed during the few microseconds the program is attached.
	prog, err := load("zt_tc", ebpf.SchedCLS, returnImm(-1))
	if err != nil {
		return err
	}
	defer prog.Close()
	return attachAndClose(link.AttachTCX(link.TCXOptions{
		Interface: lo.Index, Program: prog, Attach: ebpf.AttachTCXIngress,
	}))
}

func checkSockops(*probeEnv) error {
	cg, err := cgroup2Path()
	if err != nil {
		return err
	}
	prog, err := load("zt_sockops", ebpf.SockOps, returnImm(1))
	if err != nil {
		return err
	}
	defer prog.Close()
	return attachAndClose(link.AttachCgroup(link.CgroupOptions{
		Path: cg, Attach: ebpf.AttachCGroupSockOps, Program: prog,
	}))
}

func checkSkMsg(*probeEnv) error {
	sh, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "zt_sk_msg", Type: ebpf.SockHash, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		return fmt.Errorf("create sockhash map: %w", err)
	}
	// Closing the (empty) map also drops any program attached to it, so
	// nothing outlives this check even on the non-link path.
	defer sh.Close()
	prog, err := load("zt_sk_msg", ebpf.SkMsg, returnImm(1)) // SK_PASS
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: sh.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
	if err == nil {
		return l.Close()
	}
	// sockmap links need 6.10+; older kernels attach the program to the map.
	opts := link.RawAttachProgramOptions{Target: sh.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict}
	if aerr := link.RawAttachProgram(opts); aerr != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return link.RawDetachProgram(link.RawDetachProgramOptions{Target: sh.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
}

func checkProbeWriteUser(env *probeEnv) error {
	// bpf_probe_write_user(NULL, &zero, 8): if it ever runs it only gets
	// -EFAULT, so attaching it to a syscall tracepoint is harmless.
	prog, err := load("zt_write_user", ebpf.TracePoint, asm.Instructions{
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord), // u64 zero on the stack
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.Mov.Imm(asm.R3, 8),
		asm.FnProbeWriteUser.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	})
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && strings.Contains(strings.Join(ve.Log, "\n"), "bpf_probe_write_user") &&
		env.lockdown != "none" && env.lockdown != "unknown" {
		// Tracepoint programs may normally call this helper; under lockdown
		// the kernel withholds it, so the verifier rejects the call.
		return fmt.Errorf("refused by the verifier: lockdown=%s forbids it", env.lockdown)
	}
	if err != nil {
		return err
	}
	defer prog.Close()
	return attachAndClose(link.Tracepoint("syscalls", "sys_enter_getppid", prog, nil))
}
