package goinspect

// Functions of stripped binaries come from .gopclntab, the table the Go
// runtime itself uses for tracebacks. Since Go 1.18 its function entries are
// offsets from runtime.text, the start of Go's text, so reading it needs that
// address. Until Go 1.25 the pclntab header (pcHeader) recorded it; Go 1.26
// stopped storing it (the field is still there, always zero, so that the
// section needs no relocation) and the runtime uses moduledata.text instead.
// Tools that kept reading the header computed every function at offset 0 and
// failed or, worse, probed wrong addresses (OTel Go auto-instrumentation issue
// #3869).
//
// debug/gosym itself is fine with 1.26: since 1.18 it ignores the header
// field and uses the address the caller passes to gosym.NewLineTable. The
// question is only what to pass. The .text section address is what
// cmd/internal/objfile passes, and it is right for internally linked
// binaries, but NOT for externally linked ones (cgo with -linkmode=external,
// or any binary the C linker finishes): there .text starts with the C
// runtime's code and runtime.text comes later (0x100 bytes later in the test
// binaries here, 0x120 in a Docker CLI linked by lld). A uprobe that far off
// lands mid-instruction and corrupts the target. So findTextStart asks, in
// order:
//
//  1. the runtime.text symbol, when .symtab is there;
//  2. runtime.firstmoduledata's text field, the value the runtime uses. Go
//     1.26+ puts moduledata in its own ".go.module" section; older Go has it
//     in .noptrdata/.data, found as the word that points at the pclntab
//     (moduledata starts with pcHeader *pcHeader). In PIE binaries those
//     pointers are zero in the file and filled in by R_*_RELATIVE dynamic
//     relocations, so words are read through the relocations. Candidates are
//     checked (text <= minpc < maxpc <= etext, inside an executable segment)
//     so that a stray word equal to the pclntab address is not believed;
//  3. the pcHeader field, for Go 1.18-1.25 binaries without moduledata
//     (there should be none; it is a last resort, and is only trusted when
//     nonzero and inside an executable segment).
//
// There is deliberately no fallback to the .text section address: no uprobe
// is better than a uprobe at the wrong place.

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"fmt"
)

type funcRange struct{ entry, end uint64 }

// pclnIndex is the pclntab's function table, by name.
type pclnIndex struct {
	funcs map[string]funcRange
}

// Word indexes of fields of runtime.moduledata, in pointer-sized words. The
// layout up to etext has not changed since pcHeader was introduced (Go 1.16)
// and is the same in 1.26 and 1.27: pcHeader, six slices (funcnametab, cutab,
// filetab, pctab, pclntable, ftab) of three words, findfunctab, minpc, maxpc,
// text, etext. runtime/symtab.go says any change there must be matched in
// cmd/link, so a layout change will show up in the tests of a new toolchain.
const (
	mdPCHeader = 0
	mdMinPC    = 20
	mdMaxPC    = 21
	mdText     = 22
	mdEText    = 23
	mdWords    = 24
)

func (b *Binary) pclntab() (*pclnIndex, error) {
	b.pclnOnce.Do(func() {
		b.pcln, b.pclnErr = b.loadPclntab()
		if b.pclnErr != nil {
			b.pclnErr = fmt.Errorf("goinspect: %s: reading .gopclntab: %w", b.describe(), b.pclnErr)
		}
	})
	return b.pcln, b.pclnErr
}

// findPclntab returns the address and contents (to the end of its section)
// of the pclntab. Internally linked binaries, and externally linked ones
// whose linker keeps unknown section names (GNU ld), have a .gopclntab
// section (.data.rel.ro.gopclntab: PIE binaries of Go < 1.26, where it still
// had relocations). lld merges that one into .data.rel.ro, so then it is
// runtime.pclntab in .symtab or, stripped, found by its header.
func (b *Binary) findPclntab() (uint64, []byte, error) {
	for _, name := range []string{".gopclntab", ".data.rel.ro.gopclntab"} {
		if s := b.elf.Section(name); s != nil {
			data, err := s.Data()
			return s.Addr, data, err
		}
	}
	if addr, ok := b.symbolValue("runtime.pclntab"); ok {
		data, err := b.sectionTail(addr)
		return addr, data, err
	}
	return b.scanPclntab()
}

// scanPclntab looks for the pclntab header in the read-only data sections.
func (b *Binary) scanPclntab() (uint64, []byte, error) {
	for _, s := range b.elf.Sections {
		if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_EXECINSTR != 0 {
			continue
		}
		data, err := s.Data()
		if err != nil {
			continue
		}
		// The header is 8-aligned: magic, two zero pad bytes, the
		// instruction size quantum (1 on x86), the pointer size.
		for off := 0; off+64 <= len(data); off += 8 {
			switch binary.LittleEndian.Uint32(data[off:]) {
			case 0xfffffff1, 0xfffffff0, 0xfffffffa: // Go 1.20+, 1.18-1.19, 1.16-1.17
			default:
				continue
			}
			if data[off+4] != 0 || data[off+5] != 0 || data[off+7] != 8 || !(data[off+6] == 1 || data[off+6] == 4) {
				continue
			}
			addr := s.Addr + uint64(off)
			ptr, err := b.wordReader()
			if err != nil {
				return 0, nil, err
			}
			// Believe it only if a moduledata points at it.
			if _, ok := b.moduledataText(ptr, addr); ok {
				return addr, data[off:], nil
			}
		}
	}
	return 0, nil, fmt.Errorf("no pclntab: no .gopclntab section, no runtime.pclntab symbol, no pclntab header referenced by a moduledata")
}

// sectionTail returns the file data from addr to the end of its section.
func (b *Binary) sectionTail(addr uint64) ([]byte, error) {
	for _, s := range b.elf.Sections {
		if s.Type == elf.SHT_NOBITS || s.Addr == 0 || addr < s.Addr || addr >= s.Addr+s.Size {
			continue
		}
		data, err := s.Data()
		if err != nil {
			return nil, err
		}
		return data[addr-s.Addr:], nil
	}
	return nil, fmt.Errorf("address %#x is in no section with file data", addr)
}

func (b *Binary) loadPclntab() (*pclnIndex, error) {
	pclnAddr, data, err := b.findPclntab()
	if err != nil {
		return nil, err
	}
	text, err := b.findTextStart(pclnAddr, data)
	if err != nil {
		return nil, err
	}
	// gosym.NewTable with no symtab reads the function list of a Go 1.2+
	// pclntab; it fails for older formats, which we do not support anyway.
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text))
	if err != nil {
		return nil, err
	}
	idx := &pclnIndex{funcs: make(map[string]funcRange, len(tab.Funcs))}
	for _, f := range tab.Funcs {
		if _, dup := idx.funcs[f.Name]; !dup {
			idx.funcs[f.Name] = funcRange{entry: f.Entry, end: f.End}
		}
	}
	if len(idx.funcs) == 0 {
		return nil, fmt.Errorf("no functions (unsupported pclntab format?)")
	}
	return idx, nil
}

// findTextStart returns runtime.text; see the comment at the top of the file.
func (b *Binary) findTextStart(pclnAddr uint64, pcln []byte) (uint64, error) {
	if v, ok := b.symbolValue("runtime.text"); ok && v != 0 {
		return v, nil
	}
	ptr, err := b.wordReader()
	if err != nil {
		return 0, err
	}
	if text, ok := b.moduledataText(ptr, pclnAddr); ok {
		return text, nil
	}
	// Go 1.18-1.25: pcHeader{magic uint32; pad1, pad2, minLC, ptrSize uint8;
	// nfunc int; nfiles uint; textStart uintptr; ...}.
	if len(pcln) >= 8 && pcln[7] == 8 {
		if v, ok := ptr(pclnAddr + 8 + 2*8); ok && v != 0 && b.inText(v) {
			return v, nil
		}
	}
	return 0, fmt.Errorf("cannot find runtime.text: no .symtab, no valid runtime.firstmoduledata and no textStart in the pclntab header")
}

// moduledataText finds runtime.firstmoduledata and returns its text field.
func (b *Binary) moduledataText(ptr func(uint64) (uint64, bool), pclnAddr uint64) (uint64, bool) {
	valid := func(md uint64) (uint64, bool) {
		var w [mdWords]uint64
		for _, i := range []int{mdPCHeader, mdMinPC, mdMaxPC, mdText, mdEText} {
			v, ok := ptr(md + uint64(i)*8)
			if !ok {
				return 0, false
			}
			w[i] = v
		}
		if w[mdPCHeader] != pclnAddr || !b.inText(w[mdText]) || !b.inText(w[mdEText]-1) {
			return 0, false
		}
		if !(w[mdText] <= w[mdMinPC] && w[mdMinPC] < w[mdMaxPC] && w[mdMaxPC] <= w[mdEText]) {
			return 0, false
		}
		return w[mdText], true
	}

	// Go 1.26+: its own section.
	if s := b.elf.Section(".go.module"); s != nil {
		if text, ok := valid(s.Addr); ok {
			return text, true
		}
	}
	// PIE: the pcHeader pointer is the target of a RELATIVE relocation.
	for at, addend := range b.relative {
		if addend == pclnAddr {
			if text, ok := valid(at); ok {
				return text, true
			}
		}
	}
	// Older non-PIE: scan the data sections for the pointer.
	for _, name := range []string{".noptrdata", ".data", ".go.module"} {
		s := b.elf.Section(name)
		if s == nil || s.Type == elf.SHT_NOBITS {
			continue
		}
		data, err := s.Data()
		if err != nil {
			continue
		}
		for off := 0; off+8 <= len(data); off += 8 {
			if b.elf.ByteOrder.Uint64(data[off:]) != pclnAddr {
				continue
			}
			if text, ok := valid(s.Addr + uint64(off)); ok {
				return text, true
			}
		}
	}
	return 0, false
}

// inText reports whether addr is inside an executable PT_LOAD segment.
func (b *Binary) inText(addr uint64) bool {
	_, err := b.fileOffset(addr)
	return err == nil
}

// wordReader returns a function reading a 64-bit word at a virtual address,
// as the dynamic loader would leave it: the file contents, unless a
// R_*_RELATIVE relocation targets that address, in which case its addend
// (PIE binaries keep zeros in the file there). It also fills b.relative.
func (b *Binary) wordReader() (func(uint64) (uint64, bool), error) {
	if b.elf.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("only 64-bit binaries are supported")
	}
	if err := b.loadRelative(); err != nil {
		return nil, err
	}
	return func(addr uint64) (uint64, bool) {
		if v, ok := b.relative[addr]; ok {
			return v, true
		}
		buf, err := b.readAt(addr, 8)
		if err != nil {
			return 0, false
		}
		return b.elf.ByteOrder.Uint64(buf), true
	}, nil
}

// loadRelative collects the RELATIVE dynamic relocations (target -> addend),
// once. Only PIE binaries have them in any number.
func (b *Binary) loadRelative() error {
	b.relOnce.Do(func() {
		b.relative = map[uint64]uint64{}
		if !b.PIE {
			return
		}
		var relType uint32
		switch b.elf.Machine {
		case elf.EM_X86_64:
			relType = uint32(elf.R_X86_64_RELATIVE)
		case elf.EM_AARCH64:
			relType = uint32(elf.R_AARCH64_RELATIVE)
		default:
			return
		}
		for _, s := range b.elf.Sections {
			if s.Type != elf.SHT_RELA {
				continue
			}
			data, err := s.Data()
			if err != nil {
				b.relErr = fmt.Errorf("reading %s: %w", s.Name, err)
				return
			}
			for i := 0; i+24 <= len(data); i += 24 { // Elf64_Rela: offset, info, addend
				off := b.elf.ByteOrder.Uint64(data[i:])
				info := b.elf.ByteOrder.Uint64(data[i+8:])
				addend := b.elf.ByteOrder.Uint64(data[i+16:])
				if uint32(info) == relType {
					b.relative[off] = addend
				}
			}
		}
	})
	return b.relErr
}
