// Package goprobe attaches a probe family's uprobes to one Go binary. The
// family declares, as data, which functions it probes and which struct
// fields its programs read; goprobe resolves both in the binary (symbols
// from .symtab or .gopclntab, offsets from DWARF or zerotel's table), sets
// them as load-time constants, places each probe on an instruction the
// kernel emulates, and attaches what it can: a missing symbol or field
// disables only the probes that need it, with an error naming the binary,
// its Go version and what is missing.
package goprobe

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/zerotel/zerotel/internal/bpfprobe"
	"github.com/zerotel/zerotel/internal/goinspect"
)

// Uprobe declares one function a family probes.
type Uprobe struct {
	Symbol  string   // Go symbol, e.g. "net/http.(*response).finishRequest"
	Program string   // BPF program attached to it
	AtJump  string   // bool constant: the probe sits on the stack-check jump
	Needs   []string // offset constants the program reads
	Does    string   // what the probe marks, for messages
	// Lazy probes are resolved and loaded but attached only on request
	// (Probes.AttachLazy), when the family finds it needs them.
	Lazy bool
}

// Field declares one struct field offset a family's programs read.
type Field struct {
	Const  string // volatile const in the BPF object
	Struct string // e.g. "net/http.Request"
	Field  string // e.g. "Method"
	// Flag, if set, names a bool constant set when the field exists: the
	// programs then work without it (e.g. Request.Pattern before Go 1.23).
	Flag string
}

// Target says what to attach to.
type Target struct {
	Binary *goinspect.Binary
	PID    int // 0: every process running this binary, now and later
}

// Probes is a family loaded for one Go binary.
type Probes struct {
	*bpfprobe.Family
	target Target
	ex     *link.Executable
	lazy   map[string]placed // by symbol, until attached
}

type placed struct {
	Uprobe
	pp goinspect.ProbePoint
}

// Load resolves fields and probe points in the target binary, loads spec
// with them as constants (plus consts, the family's own), and attaches the
// uprobes and tracepoints. It fails only if no uprobe at all could be
// attached; otherwise the returned errors say what is missing.
func Load(name string, t Target, spec *ebpf.CollectionSpec, consts map[string]any, fields []Field, uprobes []Uprobe, tracepoints []bpfprobe.Tracepoint) (*Probes, []error, error) {
	bin := t.Binary
	var problems []error
	missing := map[string]error{}
	if consts == nil {
		consts = map[string]any{}
	}
	for _, f := range fields {
		off, err := bin.FieldOffset(f.Struct, f.Field)
		if err != nil {
			if f.Flag != "" {
				consts[f.Flag] = false
				continue
			}
			missing[f.Const] = err
			continue
		}
		consts[f.Const] = off
		if f.Flag != "" {
			consts[f.Flag] = true
		}
	}

	var todo []placed
	for _, u := range uprobes {
		if err := firstMissing(u, missing); err != nil {
			problems = append(problems, fmt.Errorf("%s: %s probe on %s disabled: %w", bin.Path, u.Does, u.Symbol, err))
			continue
		}
		fn, err := bin.Func(u.Symbol)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %s probe disabled: %w", bin.Path, u.Does, err))
			continue
		}
		pp, err := bin.ProbePoint(fn)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %s probe disabled: %w", bin.Path, u.Does, err))
			continue
		}
		consts[u.AtJump] = pp.Kind == goinspect.KindStackCheckJump
		todo = append(todo, placed{u, pp})
	}
	if len(todo) == 0 {
		return nil, problems, fmt.Errorf("%s (Go %s): no %s probe can be attached: %w", bin.Path, bin.GoVersion, name, errors.Join(problems...))
	}

	spec = spec.Copy()
	for c, v := range consts {
		vs, ok := spec.Variables[c]
		if !ok {
			return nil, problems, fmt.Errorf("%s: constant %q missing from the BPF object (regenerate with make generate)", name, c)
		}
		if err := vs.Set(v); err != nil {
			return nil, problems, fmt.Errorf("%s: set %s: %w", name, c, err)
		}
	}
	fam, err := bpfprobe.Load(name, spec, tracepoints)
	if err != nil {
		return nil, problems, err
	}
	ex, err := link.OpenExecutable(bin.Path)
	if err != nil {
		fam.Close()
		return nil, problems, fmt.Errorf("%s: %w", bin.Path, err)
	}
	p := &Probes{Family: fam, target: t, ex: ex, lazy: map[string]placed{}}
	attached := 0
	for _, u := range todo {
		if u.Lazy {
			p.lazy[u.Symbol] = u
			continue
		}
		if err := p.attach(u); err != nil {
			problems = append(problems, err)
			continue
		}
		attached++
	}
	if attached == 0 {
		fam.Close()
		return nil, problems, fmt.Errorf("%s: no %s probe could be attached: %w", bin.Path, name, errors.Join(problems...))
	}
	return p, problems, nil
}

func (p *Probes) attach(u placed) error {
	bin := p.target.Binary
	l, err := p.ex.Uprobe(u.Symbol, p.Coll.Programs[u.Program], &link.UprobeOptions{Address: u.pp.Offset, PID: p.target.PID})
	if err != nil {
		return fmt.Errorf("%s: attach %s probe at %s+%#x: %w", bin.Path, u.Does, u.Symbol, u.pp.Offset-u.pp.Func.Offset, err)
	}
	p.AddLink(l)
	slog.Info("uprobe attached", "binary", bin.Path, "symbol", u.Symbol, "at", fmt.Sprintf("+%#x", u.pp.Offset-u.pp.Func.Offset),
		"instruction", u.pp.Instruction, "placement", u.pp.Kind, "marks", u.Does)
	return nil
}

// Waiting reports whether the lazy probe on symbol is not attached yet.
func (p *Probes) Waiting(symbol string) bool {
	_, ok := p.lazy[symbol]
	return ok
}

// AttachLazy attaches the lazy probe on symbol, once; later calls do nothing.
func (p *Probes) AttachLazy(symbol string) error {
	u, ok := p.lazy[symbol]
	if !ok {
		return nil
	}
	delete(p.lazy, symbol)
	return p.attach(u)
}

func firstMissing(u Uprobe, missing map[string]error) error {
	for _, c := range u.Needs {
		if err := missing[c]; err != nil {
			return err
		}
	}
	return nil
}
