package goinspect

//go:generate go run ./offsetgen -o offsets.json

import (
	"debug/dwarf"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// ErrFieldUnknown is matched (errors.Is) by FieldOffset's error when neither
// DWARF nor the embedded table knows the field.
var ErrFieldUnknown = errors.New("struct field offset unknown")

// OffsetTable is the format of offsets.json, written by offsetgen.
type OffsetTable struct {
	Comment string `json:"comment"`
	// Std holds the standard library's offsets by Go minor version
	// ("go1.26"): they change only between minors (a patch release that
	// changed a struct layout would break the runtime's own assembly, and
	// has not happened). Non-std packages would get a sibling keyed by
	// module path and version.
	Std map[string]StdOffsets `json:"std"`
}

// StdOffsets are the offsets of one Go minor version.
type StdOffsets struct {
	GoVersion string                       `json:"go_version"` // exact toolchain the offsets were read from, e.g. "go1.26.8"
	GOARCH    string                       `json:"goarch"`     // "amd64"
	Structs   map[string]map[string]uint64 `json:"structs"`    // struct -> field -> byte offset
}

//go:embed offsets.json
var offsetsJSON []byte

var (
	tableOnce sync.Once
	table     OffsetTable
	tableErr  error
)

// EmbeddedOffsets returns the parsed offsets.json compiled into zerotel.
func EmbeddedOffsets() (*OffsetTable, error) {
	tableOnce.Do(func() {
		if err := json.Unmarshal(offsetsJSON, &table); err != nil {
			tableErr = fmt.Errorf("goinspect: embedded offsets.json: %w", err)
		}
	})
	return &table, tableErr
}

// FieldOffset returns the byte offset of a struct field, e.g.
// FieldOffset("net/http.Request", "Method") or ("runtime.g", "goid").
// From DWARF when the binary has it (exact for that binary, whatever its
// version); else from the table embedded in zerotel, by Go minor version
// (std packages only for now).
func (b *Binary) FieldOffset(structName, field string) (uint64, error) {
	if b.HasDWARF {
		off, err := b.DWARFFieldOffset(structName, field)
		if err == nil {
			return off, nil
		}
		// A struct the linker dropped from DWARF (unused type) or a DWARF
		// section we cannot read: the table may still know it.
		if toff, terr := b.tableFieldOffset(structName, field); terr == nil {
			return toff, nil
		}
		return 0, err
	}
	return b.tableFieldOffset(structName, field)
}

func (b *Binary) tableFieldOffset(structName, field string) (uint64, error) {
	if b.GOARCH != "amd64" {
		return 0, fmt.Errorf("goinspect: %s: %s.%s: %w: no DWARF, and the embedded table is for amd64, not %s",
			b.describe(), structName, field, ErrFieldUnknown, b.GOARCH)
	}
	off, err := TableFieldOffset(b.GoVersion, structName, field)
	if err != nil {
		return 0, fmt.Errorf("goinspect: %s: %w", b.Path, err)
	}
	return off, nil
}

// TableFieldOffset looks a field up in the embedded table only, for the Go
// version goVersion ("go1.26.8": any patch release of go1.26 uses the go1.26
// entry).
func TableFieldOffset(goVersion, structName, field string) (uint64, error) {
	t, err := EmbeddedOffsets()
	if err != nil {
		return 0, err
	}
	minor := GoMinor(goVersion)
	e, ok := t.Std[minor]
	if !ok {
		known := make([]string, 0, len(t.Std))
		for k := range t.Std {
			known = append(known, k)
		}
		sort.Strings(known)
		if minor == "" {
			minor = goVersion
		}
		return 0, fmt.Errorf("%s: %s.%s: %w: Go version %s is not in the embedded offsets table (it has %s; rebuild the binary with DWARF or run go generate ./internal/goinspect with that toolchain)",
			goVersion, structName, field, ErrFieldUnknown, minor, strings.Join(known, ", "))
	}
	off, ok := e.Structs[structName][field]
	if !ok {
		return 0, fmt.Errorf("%s: %s.%s: %w: not in the embedded offsets table for %s (add it to goinspect.Fields and run go generate ./internal/goinspect)",
			goVersion, structName, field, ErrFieldUnknown, minor)
	}
	return off, nil
}

// dwarfIndex maps struct type names to their DWARF entries.
type dwarfIndex struct {
	mu      sync.Mutex // dwarf.Data's type cache is not safe for concurrent use
	data    *dwarf.Data
	structs map[string]dwarf.Offset
}

// DWARFFieldOffset reads a field offset from the binary's DWARF only.
func (b *Binary) DWARFFieldOffset(structName, field string) (uint64, error) {
	idx, err := b.dwarfIdx()
	if err != nil {
		return 0, err
	}
	off, ok := idx.structs[structName]
	if !ok {
		return 0, fmt.Errorf("goinspect: %s: %s.%s: %w: no struct %s in DWARF", b.describe(), structName, field, ErrFieldUnknown, structName)
	}
	idx.mu.Lock()
	typ, err := idx.data.Type(off)
	idx.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("goinspect: %s: DWARF type %s: %w", b.describe(), structName, err)
	}
	st, ok := typ.(*dwarf.StructType)
	if !ok {
		return 0, fmt.Errorf("goinspect: %s: DWARF type %s is a %T, not a struct", b.describe(), structName, typ)
	}
	for _, f := range st.Field {
		if f.Name == field {
			return uint64(f.ByteOffset), nil
		}
	}
	return 0, fmt.Errorf("goinspect: %s: %s.%s: %w: struct %s has no field %s in DWARF", b.describe(), structName, field, ErrFieldUnknown, structName, field)
}

func (b *Binary) dwarfIdx() (*dwarfIndex, error) {
	b.dwarfOnce.Do(func() {
		if !b.HasDWARF {
			b.dwarfErr = fmt.Errorf("goinspect: %s: no DWARF (built with -ldflags=-w or -s)", b.describe())
			return
		}
		d, err := b.elf.DWARF()
		if err != nil {
			b.dwarfErr = fmt.Errorf("goinspect: %s: reading DWARF: %w", b.describe(), err)
			return
		}
		idx := &dwarfIndex{data: d, structs: map[string]dwarf.Offset{}}
		// Go emits types as top-level entries of its compile units; walk
		// those only and skip every entry's children (struct members,
		// function variables): one pass over the section, no type parsing.
		r := d.Reader()
		for {
			e, err := r.Next()
			if err != nil {
				b.dwarfErr = fmt.Errorf("goinspect: %s: reading DWARF: %w", b.describe(), err)
				return
			}
			if e == nil {
				break
			}
			if e.Tag == dwarf.TagCompileUnit {
				continue // descend into it
			}
			if e.Tag == dwarf.TagStructType {
				if name, ok := e.Val(dwarf.AttrName).(string); ok {
					if _, dup := idx.structs[name]; !dup {
						idx.structs[name] = e.Offset
					}
				}
			}
			if e.Children {
				r.SkipChildren()
			}
		}
		b.dwarf = idx
	})
	return b.dwarf, b.dwarfErr
}
