"""What goprof knows about Go binaries and processes, none of it naming addresses: build
info and version, function entries, uprobe sites, runtime globals found in stripped
binaries, struct layouts (DWARF, else a table per Go version), and a running target's
runtime seen from outside (rates, memory reads, the writes goprof puts back)."""
