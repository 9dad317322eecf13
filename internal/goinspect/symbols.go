package goinspect

import (
	"debug/elf"
	"errors"
	"fmt"
)

// ErrFuncNotFound is matched (errors.Is) by Func's error when the binary has
// no such function.
var ErrFuncNotFound = errors.New("function not found")

// Func is one function of a Go binary.
type Func struct {
	Name   string
	Addr   uint64 // virtual address of the entry
	Size   uint64
	Offset uint64 // file offset of the entry: what a uprobe needs (cilium/ebpf link.UprobeOptions{Address: Offset})
}

// Func finds a function by its full Go symbol name, as the linker spells it:
// "net/http.serverHandler.ServeHTTP", "net/http.(*response).finishRequest",
// "runtime.newproc1".
//
// It reads .symtab when the binary has one, else .gopclntab, which every Go
// binary keeps because the runtime needs it for tracebacks and GC (so -s -w
// does not remove it). Both give the same addresses; the tests check that.
//
// A function that is not there was most likely inlined into all its callers
// or dropped by the linker as unreachable: there is no entry to probe.
func (b *Binary) Func(name string) (Func, error) {
	if !b.Stripped {
		f, err := b.funcFromSymtab(name)
		if err == nil || !errors.Is(err, ErrFuncNotFound) {
			return f, err
		}
		// A .symtab that lacks it: pclntab will not have it either, but
		// asking costs little and gives one code path for the error.
	}
	return b.funcFromPclntab(name)
}

func (b *Binary) notFound(name string) error {
	return fmt.Errorf("goinspect: %s: %q: %w (probably inlined or not linked)", b.describe(), name, ErrFuncNotFound)
}

func (b *Binary) funcFromSymtab(name string) (Func, error) {
	b.symOnce.Do(func() {
		syms, err := b.elf.Symbols()
		if err != nil {
			b.symErr = fmt.Errorf("goinspect: %s: reading .symtab: %w", b.describe(), err)
			return
		}
		b.syms = make(map[string]elf.Symbol, len(syms)/2)
		for _, s := range syms {
			if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value == 0 {
				continue
			}
			if _, dup := b.syms[s.Name]; !dup {
				b.syms[s.Name] = s
			}
		}
	})
	if b.symErr != nil {
		return Func{}, b.symErr
	}
	s, ok := b.syms[name]
	if !ok {
		return Func{}, b.notFound(name)
	}
	off, err := b.fileOffset(s.Value)
	if err != nil {
		return Func{}, err
	}
	return Func{Name: name, Addr: s.Value, Size: s.Size, Offset: off}, nil
}

func (b *Binary) funcFromPclntab(name string) (Func, error) {
	idx, err := b.pclntab()
	if err != nil {
		return Func{}, err
	}
	e, ok := idx.funcs[name]
	if !ok {
		return Func{}, b.notFound(name)
	}
	off, err := b.fileOffset(e.entry)
	if err != nil {
		return Func{}, err
	}
	return Func{Name: name, Addr: e.entry, Size: e.end - e.entry, Offset: off}, nil
}

// symbolValue returns the value of any .symtab symbol (not only functions),
// e.g. runtime.text. ok is false when stripped or absent.
func (b *Binary) symbolValue(name string) (uint64, bool) {
	if b.Stripped {
		return 0, false
	}
	syms, err := b.elf.Symbols()
	if err != nil {
		return 0, false
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value, true
		}
	}
	return 0, false
}

// HasFunc reports whether the binary has the function, for messages such
// as "this program does not use net/http".
func (b *Binary) HasFunc(name string) bool {
	_, err := b.Func(name)
	return err == nil
}
