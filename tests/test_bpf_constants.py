"""The BPF programs' C (bpf/*.c) and the Python that reads their maps agree: #define'd
slots, struct layouts (offsets, sizes, signedness, with C's natural alignment), the
map and program names Python asks for.

Read from the source alone (no bcc, no root). Each check returns what disagrees, so the
last tests can show that a change on one side only is caught.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from goprof.bpf.compile import inline_includes
from goprof.kinds.cpu import recorder as cpu_recorder
from goprof.kinds.mem import recorder as mem_recorder
from goprof.recording import labels, windows

from tests.helpers import REPO

BPF = REPO / "bpf"

# C scalar types: (size, signed). Pointers are 8 bytes (x86-64).
C_SCALARS = {
    "u8": (1, False), "s8": (1, True), "char": (1, True), "__u8": (1, False),
    "u16": (2, False), "s16": (2, True), "__u16": (2, False), "__s16": (2, True),
    "u32": (4, False), "s32": (4, True), "int": (4, True), "unsigned": (4, False),
    "__u32": (4, False), "__s32": (4, True),
    "u64": (8, False), "s64": (8, True), "long": (8, True), "__u64": (8, False),
    "__s64": (8, True),
}
# struct module codes, standard sizes ("<"): (size, signed)
PY_CODES = {
    "b": (1, True), "B": (1, False), "?": (1, False), "h": (2, True), "H": (2, False),
    "i": (4, True), "I": (4, False), "l": (4, True), "L": (4, False),
    "q": (8, True), "Q": (8, False),
}

# A field as laid out in memory: (offset, size, signed).
Field = tuple[int, int, bool]


@dataclass
class CSource:
    """What a BPF C file declares."""

    name: str
    defines: dict[str, int]
    structs: dict[str, list[tuple[str, str, int]]]  # name -> [(type, field, count)]
    maps: dict[str, tuple[str, list[str]]]  # name -> (BPF_ macro kind, its arguments)
    programs: set[str]


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_c(name: str, text: str) -> CSource:
    text = strip_comments(text)
    defines = {}
    for m in re.finditer(r"^\s*#define\s+(\w+)\s+(\S+)\s*$", text, re.M):
        try:
            defines[m.group(1)] = int(m.group(2), 0)
        except ValueError:
            pass  # not a number
    structs = {}
    for m in re.finditer(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", text, re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            f = re.fullmatch(r"((?:struct\s+)?\w+(?:\s*\*)?)\s*(\w+)\s*"
                             r"(?:\[\s*([\w\s+*]+?)\s*\])?", decl)
            assert f, f"{name}: struct {m.group(1)}: cannot read the field {decl!r}"
            count = f.group(3)
            n = 1 if count is None else _array_length(count, defines)
            fields.append((f.group(1).replace(" ", ""), f.group(2), n))
        structs[m.group(1)] = fields
    maps = {}
    for m in re.finditer(r"\bBPF_(\w+)\s*\(([^;]*)\)\s*;", text):
        args = [" ".join(a.split()) for a in m.group(2).split(",")]
        maps[args[0]] = (m.group(1), args[1:])
    programs = set(re.findall(r"^int\s+(\w+)\s*\(", text, re.M))
    return CSource(name, defines, structs, maps, programs)


def _array_length(expr: str, defines: dict[str, int]) -> int:
    """An array length: numbers and #defines, added or multiplied (MAX_LABELS * 64)."""
    total = 0
    for term in expr.split("+"):
        product = 1
        for factor in term.split("*"):
            factor = factor.strip()
            product *= int(factor, 0) if factor[0].isdigit() else defines[factor]
        total += product
    return total


def c_layout(src: CSource, ctype: str) -> tuple[list[Field], int, int]:
    """Fields (scalars, arrays and nested structs flattened), size, alignment."""
    ctype = " ".join(ctype.split())
    if ctype in C_SCALARS:
        size, signed = C_SCALARS[ctype]
        return [(0, size, signed)], size, size
    if ctype.endswith("*"):
        return [(0, 8, False)], 8, 8
    m = re.fullmatch(r"struct\s*(\w+)", ctype)
    assert m and m.group(1) in src.structs, f"{src.name}: unknown type {ctype!r}"
    fields: list[Field] = []
    offset, align = 0, 1
    for ftype, _, count in src.structs[m.group(1)]:
        sub, size, a = c_layout(src, ftype.replace("struct", "struct "))
        offset = -(-offset // a) * a
        for i in range(count):
            fields += [(offset + i * size + o, s, sg) for o, s, sg in sub]
        offset += size * count
        align = max(align, a)
    return fields, -(-offset // align) * align, align


def py_layout(fmt: struct.Struct | str) -> tuple[list[Field], int]:
    """Fields of a struct format ("<": standard sizes, no padding but "x")."""
    fmt = fmt.format if isinstance(fmt, struct.Struct) else fmt
    assert fmt[0] in "<=", f"{fmt!r}: the maps are read little-endian, standard sizes"
    fields: list[Field] = []
    offset = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        n = int(count or 1)
        if code == "x":
            offset += n
            continue
        if code == "s":  # n bytes: a u8 array
            fields += [(offset + i, 1, False) for i in range(n)]
            offset += n
            continue
        size, signed = PY_CODES[code]
        fields += [(offset + i * size, size, signed) for i in range(n)]
        offset += n * size
    assert offset == struct.calcsize(fmt)
    return fields, offset


def layout_problems(src: CSource, ctype: str, fmt: struct.Struct | str, what: str
                    ) -> list[str]:
    c_fields, c_size, _ = c_layout(src, ctype)
    p_fields, p_size = py_layout(fmt)
    if c_fields == p_fields and c_size == p_size:
        return []
    return [f"{what}: C {ctype} is {c_size} bytes {c_fields}, Python "
            f"{getattr(fmt, 'format', fmt)!r} is {p_size} bytes {p_fields} "
            "((offset, size, signed) per field)"]


def map_type(src: CSource, name: str, part: str) -> str:
    """The C type of a map's key or value, as bcc's macros declare them."""
    assert name in src.maps, f"{src.name} declares no map {name!r}"
    kind, args = src.maps[name]
    if kind in ("HASH", "PERCPU_HASH", "LRU_HASH"):
        return args[0] if part == "key" else args[1]
    if kind in ("ARRAY", "PERCPU_ARRAY"):
        return "u32" if part == "key" else args[0]
    if kind == "STACK_TRACE":
        return "u32" if part == "key" else "u64"  # stack id -> addresses
    raise AssertionError(f"{src.name}: map {name}: BPF_{kind} not known here")


def map_size(src: CSource, name: str) -> int:
    size = src.maps[name][1][-1]
    return int(size, 0) if size[0].isdigit() else src.defines[size]


# --- what each C file is read by --------------------------------------------------------

def source(name: str) -> CSource:
    """The C file as bcc compiles it: its headers (stacks.h, golabels.h) inlined."""
    return parse_c(name, inline_includes(BPF / name))


@dataclass(frozen=True)
class Reader:
    """A C file and the Python modules that read its maps."""

    c_file: str
    modules: tuple[ModuleType, ...]
    # #defines besides the config[] and errors[] slots that Python holds too
    shared: tuple[str, ...]
    # (map, "key" or "value", the Python format it is packed or read with)
    formats: tuple[tuple[str, str, struct.Struct | str], ...]


# Formats Python writes inline (struct.pack/unpack literals, not a named constant):
# "<I" for a u32 key or config value, "<Q" for a u64 count, error counter or time.
# What both files share through stacks.h and golabels.h.
LABEL_DEFINES = ("MAX_LABELS", "LABEL_KEY_MAX", "LABEL_VALUE_MAX", "LABELS_NONE", "LABELS_MAP",
                 "LABELS_SLICE")
SHARED_FORMATS: tuple[tuple[str, str, struct.Struct | str], ...] = (
    ("stacks0", "key", "<Q"),  # windows.take_window: the stack's hash
    ("stacks1", "key", "<Q"),
    ("labels0", "key", "<Q"),  # windows.take_window: the fingerprint
    ("labels0", "value", labels.LABEL_SET),
    ("labels1", "value", labels.LABEL_SET),
)
CPU = Reader("cpu.c", (cpu_recorder, windows, labels), LABEL_DEFINES, (
    ("counts0", "key", cpu_recorder.SAMPLE_KEY),
    ("counts1", "key", cpu_recorder.SAMPLE_KEY),
    ("counts0", "value", "<Q"),  # recorder.drain: the sample count
    ("execs", "key", windows.EXEC_KEY),
    ("execs", "value", "<Q"),  # windows.take_execs: the exec's time
    ("targets", "key", "<I"),
    ("targets", "value", cpu_recorder.TARGET_INFO),
    ("config", "value", "<I"),  # windows.set_config
    ("errors", "value", "<Q"),  # windows.error_total, per CPU
    ("first_sample", "value", "<Q"),
    *SHARED_FORMATS,
))
MEM = Reader("mem.c", (mem_recorder, windows, labels), ("THRESHOLDS", *LABEL_DEFINES), (
    *SHARED_FORMATS,
    ("counts0", "key", mem_recorder.ALLOC_KEY),
    ("counts1", "key", mem_recorder.ALLOC_KEY),
    ("counts0", "value", mem_recorder.ALLOC_VALUE),
    ("counts1", "value", mem_recorder.ALLOC_VALUE),
    ("targets", "key", "<I"),
    ("targets", "value", mem_recorder.TARGET_INFO),
    ("span_states", "value", mem_recorder.SPAN_STATE),
    ("execs", "key", windows.EXEC_KEY),
    ("execs", "value", "<Q"),
    ("thresholds", "value", "<Q"),  # MemRecorder.open
    ("config", "value", "<I"),
    ("errors", "value", "<Q"),
))
READERS = {r.c_file: r for r in (CPU, MEM)}
SLOT = re.compile(r"^(ERR|CONFIG)_\w+$")


def python_constants(reader: Reader) -> dict[str, int]:
    out: dict[str, int] = {}
    for module in reader.modules:
        out.update({k: v for k, v in vars(module).items()
                    if SLOT.match(k) or k in reader.shared})
    return out


def define_problems(src: CSource, reader: Reader) -> list[str]:
    c = {k: v for k, v in src.defines.items() if SLOT.match(k) or k in reader.shared}
    py = python_constants(reader)
    names = ", ".join(m.__name__ for m in reader.modules)
    return [f"{k}: bpf/{src.name} {c.get(k, 'has no #define')}, Python ({names}) "
            f"{py.get(k, 'has no constant')}"
            for k in sorted(set(c) | set(py)) if c.get(k) != py.get(k)]


def format_problems(src: CSource, reader: Reader) -> list[str]:
    return [p for name, part, fmt in reader.formats
            for p in layout_problems(src, map_type(src, name, part), fmt,
                                     f"bpf/{src.name} map {name} {part}")]


def slot_problems(src: CSource) -> list[str]:
    """Slots fit the maps they index."""
    out = []
    errors, config = map_size(src, "errors"), map_size(src, "config")
    for k, v in src.defines.items():
        if k.startswith("ERR_") and k != "ERR_SLOTS" and not 0 <= v < errors:
            out.append(f"{k} {v}: errors[] has {errors} slots")
        if k.startswith("CONFIG_") and not 0 <= v < config:
            out.append(f"{k} {v}: config[] has {config} slots")
    return out


def used_names(module: ModuleType) -> tuple[set[str], set[str]]:
    """Map names a module asks for (map("x"), map(f"x{w}") is x0 and x1) and the
    programs it loads by name."""
    text = Path(module.__file__).read_text()
    maps = set(re.findall(r'\bmap\("(\w+)"\)', text))
    maps |= {f"{m}{w}" for m in re.findall(r'\bmap\(f"(\w+)\{\w+\}"\)', text) for w in (0, 1)}
    programs = set()
    for name in ("PROGRAM", "EXEC_PROGRAM"):
        if isinstance(getattr(module, name, None), str):
            programs.add(getattr(module, name))
    programs |= set(getattr(module, "PROGRAMS", []))
    return maps, programs


# --- the checks --------------------------------------------------------------------------

@pytest.mark.parametrize("c_file", READERS)
def test_defines_match_python(c_file: str):
    src = source(c_file)
    assert SLOT.match("ERR_SLOTS") and "ERR_SLOTS" in src.defines
    assert define_problems(src, READERS[c_file]) == []


@pytest.mark.parametrize("c_file", READERS)
def test_map_keys_and_values_match_python_formats(c_file: str):
    assert format_problems(source(c_file), READERS[c_file]) == []


@pytest.mark.parametrize("c_file", READERS)
def test_slots_fit_their_maps(c_file: str):
    src = source(c_file)
    assert map_size(src, "errors") == src.defines["ERR_SLOTS"]
    assert slot_problems(src) == []


def test_mem_threshold_table_is_the_map():
    src = source("mem.c")
    assert map_size(src, "thresholds") == src.defines["THRESHOLDS"] == mem_recorder.THRESHOLDS


@pytest.mark.parametrize("c_file", READERS)
def test_maps_and_programs_python_names_exist(c_file: str):
    src = source(c_file)
    recorder = READERS[c_file].modules[0]
    for module in (recorder, windows):
        maps, programs = used_names(module)
        assert maps and maps <= set(src.maps), (module.__name__, maps - set(src.maps))
        assert programs <= src.programs, (module.__name__, programs - src.programs)
    assert src.programs - {windows.EXEC_PROGRAM} == set(used_names(recorder)[1]) - {
        windows.EXEC_PROGRAM}, "a program in the C that Python never loads, or the reverse"


def test_cpu_map_sizes_name_its_maps():
    sizes = cpu_recorder.map_sizes(99, 1.0, 2)
    assert set(sizes) <= set(source("cpu.c").maps)


def test_every_bpf_source_is_checked():
    assert {p.name for p in BPF.glob("*.c")} == set(READERS)
    # A header is checked with the files that include it: each one must include it.
    for header in BPF.glob("*.h"):
        for c_file in READERS:
            assert f"---- {header.name} ----" in inline_includes(BPF / c_file), \
                f"bpf/{c_file} does not include {header.name}: check it on its own"


# --- the checks can fail ---------------------------------------------------------------

CPU_C = inline_includes(BPF / "cpu.c")
MEM_C = inline_includes(BPF / "mem.c")


def all_problems(c_file: str, text: str) -> list[str]:
    src = parse_c(c_file, text)
    return (define_problems(src, READERS[c_file]) + format_problems(src, READERS[c_file])
            + slot_problems(src))


@pytest.mark.parametrize(("c_file", "old", "new", "says"), [
    ("cpu.c", "#define ERR_COUNTS_FULL 5", "#define ERR_COUNTS_FULL 6", "ERR_COUNTS_FULL"),
    ("cpu.c", "#define ERR_SLOTS 10", "#define ERR_SLOTS 10\n#define ERR_NEW 6", "ERR_NEW"),
    ("cpu.c", "    u32 generation;  // execs of the target seen",
     "    u32 generation;\n    u32 extra;  // execs of the target seen", "counts0 key"),
    ("cpu.c", "    u64 user_stack; ", "    s64 user_stack; ", "counts0 key"),  # signedness
    ("cpu.c", "    u64 leaf_ret;", "    u32 leaf_ret;", "counts0 key"),  # alignment moves
    ("cpu.c", "BPF_HASH(targets, u32, struct target_info, 64)",
     "BPF_HASH(targets, u32, u32, 64)", "targets value"),
    ("cpu.c", "    u16 g_goid;", "    u32 g_goid;", "targets value"),  # in a header
    ("cpu.c", "    u8 pad[4];", "    u8 pad[8];", "labels0 value"),
    ("cpu.c", "#define LABEL_KEY_MAX 64", "#define LABEL_KEY_MAX 32", "LABEL_KEY_MAX"),
    ("mem.c", "#define CONFIG_WINDOW 0", "#define CONFIG_WINDOW 1", "CONFIG_WINDOW"),
    ("mem.c", "    u64 bytes;\n};", "    u64 bytes;\n    u64 frees;\n};", "counts0 value"),
    ("mem.c", "    u32 ready; ", "    u32 ready[2]; ", "targets value"),
    ("mem.c", "    s64 until_sample;", "    u64 until_sample;", "span_states value"),
    ("mem.c", "#define ERR_SAMPLED 9", "#define ERR_SAMPLED 19", "ERR_SAMPLED"),
])
def test_a_change_on_one_side_is_caught(c_file, old, new, says):
    text = {"cpu.c": CPU_C, "mem.c": MEM_C}[c_file]
    assert all_problems(c_file, text) == []
    assert text.count(old) == 1, f"{old!r} is not in bpf/{c_file} (once): update this test"
    problems = all_problems(c_file, text.replace(old, new))
    assert any(says in p for p in problems), problems


def test_a_python_side_change_is_caught(monkeypatch):
    monkeypatch.setattr(cpu_recorder, "ERR_USER_STACK", 7)
    assert any("ERR_USER_STACK" in p for p in all_problems("cpu.c", CPU_C))
    monkeypatch.setattr(mem_recorder, "ERR_NEW_SLOT", 10, raising=False)
    assert any("ERR_NEW_SLOT" in p for p in all_problems("mem.c", MEM_C))
    src = parse_c("mem.c", MEM_C)
    assert not layout_problems(src, "struct alloc_key", mem_recorder.ALLOC_KEY, "x")
    assert layout_problems(src, "struct alloc_key", "<IIQQQQQI", "x")  # a field fewer
    assert layout_problems(src, "struct alloc_key", "<IIqQQQQII", "x")  # signed stack hash
