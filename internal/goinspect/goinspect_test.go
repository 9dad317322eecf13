package goinspect

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// The functions every Go probe of zerotel may use; the test program links
// all of them.
var probedFuncs = []string{
	"net/http.serverHandler.ServeHTTP",
	"net/http.(*response).finishRequest",
	"net/http.readTransfer",
	"net/http.(*Transport).roundTrip",
	"runtime.newproc1",
}

// variant is one way of building testdata/httpserver.
type variant struct {
	name      string
	toolchain string   // GOTOOLCHAIN value; "local" is the go on PATH
	env       []string // extra environment
	args      []string // extra go build flags
	twin      string   // the unstripped build with the same addresses ("" = itself)
	pie       bool
	stripped  bool
	extLink   bool // needs a C toolchain
}

var variants = []variant{
	{name: "normal", toolchain: "local"},
	{name: "stripped", toolchain: "local", args: []string{"-ldflags=-s -w"}, twin: "normal", stripped: true},
	{name: "noopt", toolchain: "local", args: []string{"-gcflags=all=-N -l"}},
	{name: "pie", toolchain: "local", args: []string{"-buildmode=pie"}, pie: true},
	{name: "pie-stripped", toolchain: "local", args: []string{"-buildmode=pie", "-ldflags=-s -w"}, twin: "pie", pie: true, stripped: true},
	// External linking: the C linker puts crt code first in .text, so
	// runtime.text != .text start. This is the case that breaks tools
	// using the .text address for Go 1.26 stripped binaries.
	{name: "extlink", toolchain: "local", env: []string{"CGO_ENABLED=1"}, args: []string{"-ldflags=-linkmode=external"}, extLink: true},
	{name: "extlink-stripped", toolchain: "local", env: []string{"CGO_ENABLED=1"}, args: []string{"-ldflags=-linkmode=external -s -w"}, twin: "extlink", stripped: true, extLink: true},
	{name: "go1.27", toolchain: "go1.27.3"},
	{name: "go1.27-stripped", toolchain: "go1.27.3", args: []string{"-ldflags=-s -w"}, twin: "go1.27", stripped: true},
}

var (
	buildDir  string
	buildMu   sync.Mutex
	builtPath = map[string]string{} // variant name -> binary
	builtErr  = map[string]error{}
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "goinspect-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func variantByName(name string) variant {
	for _, v := range variants {
		if v.name == name {
			return v
		}
	}
	panic("no variant " + name)
}

// build builds testdata/httpserver as variant v (once per test binary run)
// and returns its path. It skips the test when the toolchain cannot be had.
func build(t *testing.T, v variant) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := builtPath[v.name]; ok {
		return p
	}
	if err, ok := builtErr[v.name]; ok {
		t.Skip(err)
	}
	if v.extLink {
		if _, err := exec.LookPath("gcc"); err != nil {
			builtErr[v.name] = fmt.Errorf("variant %s needs gcc for external linking: %v", v.name, err)
			t.Skip(builtErr[v.name])
		}
	}
	if v.toolchain != "local" {
		// Fetching the toolchain needs the module proxy: without it, skip
		// (clearly) rather than fail.
		cmd := exec.Command("go", "version")
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN="+v.toolchain)
		if msg, err := cmd.CombinedOutput(); err != nil {
			builtErr[v.name] = fmt.Errorf("cannot get Go toolchain %s (module proxy unreachable?), skipping variant %s: %v: %s", v.toolchain, v.name, err, msg)
			t.Skip(builtErr[v.name])
		}
	}
	out := filepath.Join(buildDir, v.name)
	args := append([]string{"build", "-o", out}, v.args...)
	args = append(args, "./testdata/httpserver")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN="+v.toolchain, "GOFLAGS=-buildvcs=false", "GOWORK=off")
	cmd.Env = append(cmd.Env, v.env...)
	msg, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	builtPath[v.name] = out
	return out
}

// wantGoVersion is what `go env GOVERSION` says under that toolchain.
func wantGoVersion(t *testing.T, toolchain string) string {
	t.Helper()
	cmd := exec.Command("go", "env", "GOVERSION")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN="+toolchain)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go env GOVERSION (GOTOOLCHAIN=%s): %v", toolchain, err)
	}
	return strings.TrimSpace(string(out))
}

// refFunc reads a function's address straight from the ELF .symtab and
// converts it to a file offset through the program headers: the reference
// the package's answers are compared with.
func refFunc(t *testing.T, path, name string) (addr, off uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, s := range syms {
		if s.Name != name {
			continue
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && s.Value >= p.Vaddr && s.Value < p.Vaddr+p.Filesz {
				return s.Value, s.Value - p.Vaddr + p.Off
			}
		}
		t.Fatalf("%s: %s at %#x is in no segment", path, name, s.Value)
	}
	t.Fatalf("%s: no symbol %s", path, name)
	return 0, 0
}

func TestBinaries(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			path := build(t, v)
			twinPath := path
			if v.twin != "" {
				twinPath = build(t, variantByName(v.twin))
			}
			b, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()

			if want := wantGoVersion(t, v.toolchain); b.GoVersion != want {
				t.Errorf("GoVersion = %q, want %q", b.GoVersion, want)
			}
			if b.MainModule != "github.com/zerotel/zerotel" || b.GOARCH != "amd64" {
				t.Errorf("MainModule, GOARCH = %q, %q", b.MainModule, b.GOARCH)
			}
			if b.Stripped != v.stripped || b.HasDWARF == v.stripped || b.PIE != v.pie {
				t.Errorf("Stripped, HasDWARF, PIE = %v, %v, %v; want %v, %v, %v", b.Stripped, b.HasDWARF, b.PIE, v.stripped, !v.stripped, v.pie)
			}

			t.Run("textStart", func(t *testing.T) { checkTextStart(t, b, twinPath) })
			t.Run("Func", func(t *testing.T) { checkFuncs(t, b, twinPath) })
			t.Run("ProbePoint", func(t *testing.T) { checkProbePoints(t, b, v) })
			t.Run("FieldOffset", func(t *testing.T) { checkFieldOffsets(t, b, twinPath) })
		})
	}
}

// checkTextStart: runtime.firstmoduledata's text, found without symbols,
// must be the runtime.text symbol of the twin.
func checkTextStart(t *testing.T, b *Binary, twinPath string) {
	want, _ := refFunc(t, twinPath, "runtime.text")
	ptr, err := b.wordReader()
	if err != nil {
		t.Fatal(err)
	}
	pclnAddr, _, err := b.findPclntab()
	if err != nil {
		t.Fatal(err)
	}
	// What a stripped binary linked by lld (no .gopclntab section) needs.
	if scanned, _, err := b.scanPclntab(); err != nil || scanned != pclnAddr {
		t.Errorf("scanPclntab = %#x, %v; want %#x", scanned, err, pclnAddr)
	}
	got, ok := b.moduledataText(ptr, pclnAddr)
	if !ok || got != want {
		t.Errorf("moduledata text = %#x, %v; want runtime.text = %#x", got, ok, want)
	}
	if s := b.elf.Section(".text"); s != nil && s.Addr != want {
		t.Logf(".text section at %#x, runtime.text at %#x: the .text address would be wrong here", s.Addr, want)
	}
}

func checkFuncs(t *testing.T, b *Binary, twinPath string) {
	for _, name := range probedFuncs {
		f, err := b.Func(name)
		if err != nil {
			t.Error(err)
			continue
		}
		addr, off := refFunc(t, twinPath, name)
		if f.Name != name || f.Addr != addr || f.Offset != off || f.Size == 0 {
			t.Errorf("Func(%q) = %+v; want Addr %#x Offset %#x (symtab of %s)", name, f, addr, off, filepath.Base(twinPath))
		}
		if !b.Stripped { // the pclntab path must agree with .symtab too
			p, err := b.funcFromPclntab(name)
			if err != nil || p.Addr != f.Addr || p.Offset != f.Offset || p.Size < f.Size {
				t.Errorf("funcFromPclntab(%q) = %+v, %v; symtab says %+v", name, p, err, f)
			}
		}
	}
}

func checkProbePoints(t *testing.T, b *Binary, v variant) {
	raw, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	probe := func(name, wantKind string) {
		f, err := b.Func(name)
		if err != nil {
			t.Error(err)
			return
		}
		pp, err := b.ProbePoint(f)
		if err != nil {
			t.Error(err)
			return
		}
		t.Logf("%s: %s at +%#x: %s", name, pp.Kind, pp.Offset-f.Offset, pp.Instruction)
		if pp.Kind != wantKind {
			t.Errorf("%s: Kind %q, want %q (%+v)", name, pp.Kind, wantKind, pp)
			return
		}
		// Decode the file's own bytes at the returned offset.
		inst, err := x86asm.Decode(raw[pp.Offset:], 64)
		if err != nil {
			t.Errorf("%s: decoding at file offset %#x: %v", name, pp.Offset, err)
			return
		}
		switch wantKind {
		case KindStackCheckJump:
			if inst.Op != x86asm.JBE || pp.Offset <= f.Offset || pp.Offset >= f.Offset+f.Size || pp.Addr-f.Addr != pp.Offset-f.Offset {
				t.Errorf("%s: at file offset %#x is %v (func at %#x..%#x), want a JBE inside the function", name, pp.Offset, inst, f.Offset, f.Offset+f.Size)
			}
			if !strings.HasPrefix(pp.Instruction, "JBE ") {
				t.Errorf("%s: Instruction %q", name, pp.Instruction)
			}
		default:
			if pp.Offset != f.Offset {
				t.Errorf("%s: %s probe at %#x, want the entry %#x", name, wantKind, pp.Offset, f.Offset)
			}
		}
	}
	for _, name := range probedFuncs {
		probe(name, KindStackCheckJump)
	}
	// The three prologue shapes of testdata/httpserver.
	probe("main.hugeFrame", KindStackCheckJump) // MOVQ SP, R12; SUBQ; JB; CMPQ; JBE
	probe("main.nosplitFrame", KindEntry)       // PUSHQ BP
	if v.name == "noopt" {
		probe("main.leafAdd", KindEntry) // -N gives it a frame: PUSHQ BP
	} else {
		probe("main.leafAdd", KindEntrySingleStep) // LEAQ
	}
}

func checkFieldOffsets(t *testing.T, b *Binary, twinPath string) {
	var twin *Binary
	if !b.HasDWARF {
		var err error
		if twin, err = Open(twinPath); err != nil {
			t.Fatal(err)
		}
		defer twin.Close()
	}
	for _, f := range Fields {
		got, err := b.FieldOffset(f.Struct, f.Name)
		if err != nil {
			t.Error(err)
			continue
		}
		table, err := TableFieldOffset(b.GoVersion, f.Struct, f.Name)
		if err != nil {
			t.Error(err)
			continue
		}
		if b.HasDWARF {
			dw, err := b.DWARFFieldOffset(f.Struct, f.Name)
			if err != nil || got != dw || dw != table {
				t.Errorf("%s.%s: FieldOffset %d, DWARF %d (%v), table %d", f.Struct, f.Name, got, dw, err, table)
			}
		} else {
			dw, err := twin.DWARFFieldOffset(f.Struct, f.Name)
			if err != nil || got != dw || got != table {
				t.Errorf("%s.%s: FieldOffset %d, table %d, DWARF of the unstripped twin %d (%v)", f.Struct, f.Name, got, table, dw, err)
			}
		}
	}
}

func TestNotGo(t *testing.T) {
	_, err := Open("/bin/true")
	if !errors.Is(err, ErrNotGo) {
		t.Fatalf("Open(/bin/true) = %v, want ErrNotGo", err)
	}
	if want := "/bin/true is not a Go binary (no Go build info)"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	if _, err := Open("/nonexistent/zerotel"); err == nil || errors.Is(err, ErrNotGo) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing file) = %v, want a not-exist error", err)
	}
}

func TestMissingFunc(t *testing.T) {
	for _, name := range []string{"normal", "stripped"} {
		b, err := Open(build(t, variantByName(name)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.Func("main.noSuchFunction")
		b.Close()
		if !errors.Is(err, ErrFuncNotFound) {
			t.Fatalf("%s: err = %v, want ErrFuncNotFound", name, err)
		}
		for _, want := range []string{b.Path, b.GoVersion, "main.noSuchFunction", "probably inlined or not linked"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not say %q", name, err, want)
			}
		}
	}
}

func TestFieldOffsetErrors(t *testing.T) {
	b, err := Open(build(t, variantByName("stripped")))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.FieldOffset("net/http.Request", "NoSuchField")
	if !errors.Is(err, ErrFieldUnknown) {
		t.Fatalf("err = %v, want ErrFieldUnknown", err)
	}
	for _, want := range []string{b.Path, b.GoVersion, "net/http.Request", "NoSuchField"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	// Another patch release of a known minor uses that minor's entry.
	a, err1 := TableFieldOffset("go1.26.0", "runtime.g", "goid")
	c, err2 := TableFieldOffset("go1.26.8", "runtime.g", "goid")
	if err1 != nil || err2 != nil || a != c {
		t.Errorf("go1.26.0 vs go1.26.8 goid: %d, %v / %d, %v", a, err1, c, err2)
	}
	// An unknown minor is an error naming it.
	_, err = TableFieldOffset("go1.99.2", "runtime.g", "goid")
	if !errors.Is(err, ErrFieldUnknown) || !strings.Contains(err.Error(), "Go version go1.99 ") {
		t.Errorf("go1.99.2: %v", err)
	}
}

// Every field of Fields is in every minor of the embedded table: a field
// added to Fields without rerunning go generate fails here.
func TestEmbeddedTableComplete(t *testing.T) {
	tab, err := EmbeddedOffsets()
	if err != nil {
		t.Fatal(err)
	}
	for _, minor := range []string{"go1.26", "go1.27"} {
		e, ok := tab.Std[minor]
		if !ok {
			t.Errorf("no %s in offsets.json", minor)
			continue
		}
		if GoMinor(e.GoVersion) != minor || e.GOARCH != "amd64" {
			t.Errorf("%s: go_version %q, goarch %q", minor, e.GoVersion, e.GOARCH)
		}
		for _, f := range Fields {
			if _, ok := e.Structs[f.Struct][f.Name]; !ok {
				t.Errorf("%s: %s.%s missing: run go generate ./internal/goinspect/", minor, f.Struct, f.Name)
			}
		}
	}
}

func TestGoMinor(t *testing.T) {
	for in, want := range map[string]string{
		"go1.26.8":            "go1.26",
		"go1.27":              "go1.27",
		"go1.27rc1":           "go1.27",
		"go1.26.8 X:nodwarf5": "go1.26",
		"devel go1.28-abcdef": "",
		"go2":                 "",
		"":                    "",
		"go1.x":               "",
	} {
		if got := GoMinor(in); got != want {
			t.Errorf("GoMinor(%q) = %q, want %q", in, got, want)
		}
	}
}

// A Binary is shared by every probe of a process: lazy loading must be safe
// from several goroutines (run with -race to check).
func TestConcurrentUse(t *testing.T) {
	for _, name := range []string{"normal", "pie-stripped"} {
		b, err := Open(build(t, variantByName(name)))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, fn := range probedFuncs {
					f, err := b.Func(fn)
					if err == nil {
						_, err = b.ProbePoint(f)
					}
					if err != nil {
						t.Error(err)
					}
				}
				for _, f := range Fields[:5] {
					if _, err := b.FieldOffset(f.Struct, f.Name); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		b.Close()
	}
}
