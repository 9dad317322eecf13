// Package bpfprobe is the plumbing every kernel probe family shares: load a
// bpf2go collection, attach the tracepoints its table declares (one failing
// attach never stops the others), read its ring buffer, and count events read
// and lost so they can be exported.
package bpfprobe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// Tracepoint declares one tracepoint a probe family attaches a program to.
type Tracepoint struct {
	Group    string // tracefs group, e.g. "syscalls"
	Name     string // tracepoint, e.g. "sys_enter_execve"
	Program  string // program name in the family's BPF object
	Optional bool   // the family still works without it, with less detail
	// Else is attached in its place where it is missing: an older
	// kernel's (costlier) way to see the same thing.
	Else *Tracepoint
}

func (t Tracepoint) String() string { return t.Group + ":" + t.Name }

// Family is one loaded probe family: its BPF objects, links and counters.
type Family struct {
	Name string
	Coll *ebpf.Collection
	// Missing lists the optional tracepoints that could not be attached.
	Missing []Tracepoint

	links       []link.Link
	read        atomic.Uint64
	undecodable atomic.Uint64
	once        sync.Once
}

// LoadGenerated is Load for a bpf2go-generated loader (loadExec, loadTcp...).
func LoadGenerated(name string, load func() (*ebpf.CollectionSpec, error), tracepoints []Tracepoint) (*Family, error) {
	spec, err := load()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return Load(name, spec, tracepoints)
}

// Load loads spec into the kernel and attaches the tracepoints. A required
// tracepoint that fails to attach fails the family; an optional one is
// logged, naming the tracepoint and what to do, and the rest go on.
func Load(name string, spec *ebpf.CollectionSpec, tracepoints []Tracepoint) (*Family, error) {
	if err := EnsureTracefs(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	_ = rlimit.RemoveMemlock() // only matters before kernel 5.11

	if err := setWakeupBytes(spec); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: load BPF objects: %w", name, explain(err))
	}
	f := &Family{Name: name, Coll: coll}
	for _, tp := range tracepoints {
		l, err := f.attachTracepoint(tp)
		if errors.Is(err, errNoProgram) {
			f.Close()
			return nil, err
		}
		if err != nil {
			if !tp.Optional {
				f.Close()
				return nil, err
			}
			slog.Warn("optional tracepoint unavailable; continuing without it", "probe", name, "tracepoint", tp.String(), "error", err)
			f.Missing = append(f.Missing, tp)
			continue
		}
		f.links = append(f.links, l)
	}
	register(f)
	return f, nil
}

var errNoProgram = errors.New("program missing from the BPF object (regenerate with make generate)")

// attachTracepoint attaches tp, or else what tp.Else names.
func (f *Family) attachTracepoint(tp Tracepoint) (link.Link, error) {
	prog := f.Coll.Programs[tp.Program]
	if prog == nil {
		return nil, fmt.Errorf("%s: %q: %w", f.Name, tp.Program, errNoProgram)
	}
	l, err := link.Tracepoint(tp.Group, tp.Name, prog, nil)
	if err == nil {
		return l, nil
	}
	err = fmt.Errorf("%s: attach tracepoint %s: %w", f.Name, tp, explain(err))
	if tp.Else == nil {
		return nil, err
	}
	l, elseErr := f.attachTracepoint(*tp.Else)
	if elseErr != nil {
		return nil, errors.Join(err, elseErr)
	}
	slog.Info("tracepoint unavailable; using its alternative", "probe", f.Name, "tracepoint", tp.String(), "instead", tp.Else.String())
	return l, nil
}

// AddLink makes the family own l: it is closed with the family. Families
// that attach more than tracepoints (uprobes) add their links here.
func (f *Family) AddLink(l link.Link) { f.links = append(f.links, l) }

// Close detaches every link and unloads the objects. Safe to call twice.
func (f *Family) Close() error {
	var errs []error
	f.once.Do(func() {
		unregister(f)
		for _, l := range f.links {
			errs = append(errs, l.Close())
		}
		f.Coll.Close()
	})
	return errors.Join(errs...)
}

// Read returns how many events user space has read from the family.
func (f *Family) Read() uint64 { return f.read.Load() }

// Lost returns how many events were lost: dropped by the kernel side
// because the ring buffer was full (the sum of the per-CPU "lost"
// counter), or read but undecodable.
func (f *Family) Lost() uint64 {
	m := f.Coll.Maps["lost"]
	if m == nil {
		return f.undecodable.Load()
	}
	var perCPU []uint64
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return 0
	}
	n := f.undecodable.Load()
	for _, v := range perCPU {
		n += v
	}
	return n
}

// ReadEvents reads the ring buffer map named ringName until ctx is done,
// handing each raw record to handle. The slice is reused: copy what you keep.
func (f *Family) ReadEvents(ctx context.Context, ringName string, handle func(raw []byte)) error {
	m := f.Coll.Maps[ringName]
	if m == nil {
		return fmt.Errorf("%s: no ring buffer map %q", f.Name, ringName)
	}
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return fmt.Errorf("%s: open ring buffer: %w", f.Name, err)
	}
	defer rd.Close()
	// When ctx ends, wake a waiting read; what is still in the ring is then
	// drained once more before returning, so the last events of a process
	// that just exited are not lost.
	stop := context.AfterFunc(ctx, func() { rd.SetDeadline(time.Now()) })
	defer stop()

	// The BPF side wakes the reader only for a batch (zerotel.h): drain
	// every DrainInterval anyway, so a quiet ring is read within that time.
	var rec ringbuf.Record
	rd.SetDeadline(time.Now().Add(DrainInterval))
	finalPass := false
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			f.read.Add(1)
			handle(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
			if ctx.Err() == nil {
				rd.SetDeadline(time.Now().Add(DrainInterval))
			} else if finalPass {
				return nil
			} else {
				finalPass = true
				rd.SetDeadline(time.Now())
			}
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("%s: read ring buffer: %w", f.Name, err)
		}
	}
}

// ReadDecoded is ReadEvents with a decoder: each record decode accepts is
// handed to handle; one it rejects (a zerotel bug: the generated types
// should always match) is logged once and counted as lost.
func ReadDecoded[E any](ctx context.Context, f *Family, ringName string, decode func([]byte) (E, error), handle func(E)) error {
	var once sync.Once
	return f.ReadEvents(ctx, ringName, func(raw []byte) {
		ev, err := decode(raw)
		if err != nil {
			f.undecodable.Add(1)
			once.Do(func() { slog.Error("undecodable event; please report", "probe", f.Name, "error", err) })
			return
		}
		handle(ev)
	})
}

// DrainInterval bounds how long an event waits in a quiet ring buffer.
const DrainInterval = 100 * time.Millisecond

// setWakeupBytes sizes the batches after which a CPU wakes the ring-buffer
// reader (wakeup_bytes in zerotel.h): a quarter of the ring split between
// the CPUs, so the ring holds every CPU's batch with room to spare while
// the reader wakes, and a batch is between 4 KiB and 256 KiB.
func setWakeupBytes(spec *ebpf.CollectionSpec) error {
	v, ok := spec.Variables["wakeup_bytes"]
	if !ok {
		return nil
	}
	var ring uint32
	for _, m := range spec.Maps {
		if m.Type == ebpf.RingBuf && m.MaxEntries > ring {
			ring = m.MaxEntries
		}
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil || ring == 0 {
		return nil // keep the compiled-in default
	}
	n := min(max(uint64(ring)/4/uint64(cpus), 4<<10), 256<<10)
	if err := v.Set(n); err != nil {
		return fmt.Errorf("set wakeup_bytes: %w", err)
	}
	return nil
}
