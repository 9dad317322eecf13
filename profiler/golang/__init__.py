"""What goprof knows about Go binaries and processes, none of it naming addresses
(that is goprof.symbolizer's):

- buildinfo: the Go version from the build info blob;
- functions: function entries (pclntab, else ELF symbols) and a function's code;
- probes: uprobe sites, the JBE after a function's stack-bound check;
- x86: the RIP-relative operands of x86-64 code;
- globals: runtime variables, from .symtab or found in the code of stripped binaries;
- layouts: struct offsets, from DWARF else a (struct, field) table per Go version;
- dwarf: struct types read from DWARF;
- process: a running target's Go runtime seen from outside (binary, bias, rates);
- writes: the writes goprof puts into a target's runtime, shared and recorded;
- tls: where a thread's g lives in its thread-local storage (offset from the FS base);
- labels, goroutines, gstatus, unwind: every goroutine of a running program, its
  state, pprof labels and stack (`goprof goroutines`).

Nothing is imported here: goprof.symbolizer imports goprof.golang.buildinfo, which
imports goprof.symbolizer's ELF reader in turn.
"""
