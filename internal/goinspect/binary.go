// Package goinspect is everything zerotel knows about a Go binary: its Go
// and module versions, where its functions are (also when it is stripped),
// where to put a cheap uprobe on them, and the byte offsets of the struct
// fields the BPF programs read. Every Go probe reuses it.
//
// It reads the file only; it never runs or ptraces the target. Only ELF
// files are supported; ProbePoint and the embedded offsets table are amd64
// only (that is what the BPF side supports).
package goinspect

import (
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// ErrNotGo is matched (errors.Is) by the error Open returns for a file that
// has no Go build info: a C program, a script, a Go binary so old or so
// mangled that debug/buildinfo cannot read it.
var ErrNotGo = errors.New("not a Go binary")

// notGoError carries the path, so the message says which file it was.
type notGoError struct {
	path  string
	cause error // what debug/buildinfo said, kept for %+v-style debugging
}

func (e *notGoError) Error() string {
	return e.path + " is not a Go binary (no Go build info)"
}
func (e *notGoError) Is(target error) bool { return target == ErrNotGo }
func (e *notGoError) Unwrap() error        { return e.cause }

// Binary is an opened Go executable. Its exported fields are filled by Open;
// symbols, pclntab and DWARF are loaded lazily, on the first call that needs
// them, so that opening a binary just to read its version stays cheap.
// A Binary is safe for concurrent use.
type Binary struct {
	Path       string
	GoVersion  string            // e.g. "go1.26.8", from debug/buildinfo (works when stripped)
	MainModule string            // main module path, e.g. "github.com/zerotel/zerotel"; "command-line-arguments" for go build file.go
	Modules    map[string]string // module path -> version (dependencies, with replacements applied)
	GOARCH     string            // from the build settings, e.g. "amd64"
	Stripped   bool              // no .symtab (-ldflags=-s)
	PIE        bool              // ELF type ET_DYN (-buildmode=pie, or the default on some platforms)
	HasDWARF   bool              // has a .debug_info section (absent with -ldflags=-w)

	osf *os.File
	elf *elf.File

	symOnce sync.Once
	syms    map[string]elf.Symbol // function symbols from .symtab, by name
	symErr  error

	pclnOnce sync.Once
	pcln     *pclnIndex
	pclnErr  error

	relOnce  sync.Once
	relative map[uint64]uint64 // R_*_RELATIVE dynamic relocations: target -> addend (PIE)
	relErr   error

	dwarfOnce sync.Once
	dwarf     *dwarfIndex
	dwarfErr  error
}

// Open opens the Go executable at path. A file that is not a Go binary gives
// an error matching ErrNotGo; an unreadable file gives the os error.
func Open(path string) (*Binary, error) {
	osf, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("goinspect: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			osf.Close()
		}
	}()

	// Build info first: it is what tells a Go binary from any other, and it
	// survives -s -w.
	info, err := buildinfo.Read(osf)
	if err != nil {
		return nil, &notGoError{path: path, cause: err}
	}
	ef, err := elf.NewFile(osf)
	if err != nil {
		return nil, fmt.Errorf("goinspect: %s is a Go binary but not an ELF file (only Linux ELF binaries are supported): %w", path, err)
	}

	b := &Binary{
		Path:       path,
		GoVersion:  info.GoVersion,
		MainModule: info.Main.Path,
		Modules:    make(map[string]string, len(info.Deps)),
		Stripped:   ef.Section(".symtab") == nil,
		PIE:        ef.Type == elf.ET_DYN,
		HasDWARF:   ef.Section(".debug_info") != nil || ef.Section(".zdebug_info") != nil,
		osf:        osf,
		elf:        ef,
	}
	for _, d := range info.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		b.Modules[d.Path] = d.Version
	}
	for _, s := range info.Settings {
		if s.Key == "GOARCH" {
			b.GOARCH = s.Value
		}
	}
	if b.GOARCH == "" {
		b.GOARCH = archOf(ef.Machine)
	}
	ok = true
	return b, nil
}

// Close releases the file. The Binary must not be used afterwards.
func (b *Binary) Close() error {
	return b.osf.Close()
}

// GoMinor returns the "major.minor" part of a Go version as reported by the
// toolchain: "go1.26.8" -> "go1.26", "go1.27rc1" -> "go1.27",
// "go1.26.8 X:nodwarf5" -> "go1.26". It returns "" for anything else
// (e.g. "devel ..." toolchains).
func GoMinor(version string) string {
	v, _, _ := strings.Cut(version, " ")
	if !strings.HasPrefix(v, "go1.") {
		return ""
	}
	rest := v[len("go1."):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 {
		return ""
	}
	return "go1." + rest[:n]
}

func archOf(m elf.Machine) string {
	switch m {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return m.String()
}

// describe is how errors name the binary: path and Go version, the two
// things one needs to reproduce a failure.
func (b *Binary) describe() string {
	return fmt.Sprintf("%s (%s)", b.Path, b.GoVersion)
}

// fileOffset converts a virtual address in an executable segment to the file
// offset a uprobe needs. Program headers, not sections: they are what the
// kernel maps, and they are present even when section headers are mangled.
func (b *Binary) fileOffset(addr uint64) (uint64, error) {
	for _, p := range b.elf.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 {
			continue
		}
		if addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("goinspect: %s: address %#x is in no executable segment", b.describe(), addr)
}

// readAt reads n bytes at virtual address addr from whatever section holds
// it in the file.
func (b *Binary) readAt(addr uint64, n int) ([]byte, error) {
	for _, s := range b.elf.Sections {
		if s.Type == elf.SHT_NOBITS || s.Addr == 0 || addr < s.Addr || addr+uint64(n) > s.Addr+s.Size {
			continue
		}
		buf := make([]byte, n)
		if _, err := s.ReadAt(buf, int64(addr-s.Addr)); err != nil {
			return nil, err
		}
		return buf, nil
	}
	return nil, fmt.Errorf("address %#x (%d bytes) is in no section with file data", addr, n)
}
