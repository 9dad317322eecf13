"""Struct types from a Go binary's DWARF (.debug_info, compressed or not): each one's
size and its members' offsets and sizes. goprof.golang.layouts asks for the runtime's."""

from __future__ import annotations

from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from goprof.symbolizer.errors import SymbolizerError


@dataclass(frozen=True)
class DwarfStruct:
    size: int
    members: dict[str, tuple[int, int | None]]  # name -> (offset, size of its type)
    order: tuple[str, ...]  # member names as declared


def read_structs(path: str, names: set[str]) -> dict[str, DwarfStruct] | None:
    """The named struct types found in the file's DWARF (those it lacks are left out);
    None when the file has no DWARF. SymbolizerError when it cannot be read."""
    try:
        return _dwarf_structs(path, names)
    except SymbolizerError:
        raise
    except OSError as e:
        raise SymbolizerError(f"{path}: cannot read: {e.strerror or e}") from e
    except Exception as e:  # pyelftools raises many types on corrupt DWARF
        raise SymbolizerError(f"{path}: unreadable DWARF: {e!r}") from e


def _dwarf_structs(path: str, names: set[str]) -> dict[str, DwarfStruct] | None:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not any(elf.get_section_by_name(n) is not None
                   for n in (".debug_info", ".zdebug_info")):
            return None
        dwarf = elf.get_dwarf_info()
        found = _structs_by_name_search(dwarf, names)
        if len(found) < len(names):
            found.update(_structs_by_walk(dwarf, names - set(found)))
        return found


DIE_SEARCH_LIMIT = 64  # occurrences of a name tried before walking the units


def _structs_by_name_search(dwarf, names: set[str]) -> dict[str, DwarfStruct]:
    """The fast way: Go writes a type's name inline (DW_FORM_string) as its DIE's first
    attribute, right after a one-byte abbreviation code, so the DIE starts one byte
    before the name's bytes. Each guess is parsed and kept only if it is a struct of
    that very name; walking the units instead takes a second or more on a large binary
    (the runtime's types are not in the first "runtime" unit in every version)."""
    raw = dwarf.debug_info_sec.stream.getvalue()
    found: dict[str, DwarfStruct] = {}
    for name in names:
        needle = name.encode() + b"\0"
        i = raw.find(needle)
        for _ in range(DIE_SEARCH_LIMIT):
            if i < 1:
                break
            die = _die_at(dwarf, i - 1)
            if die is not None and die.tag == "DW_TAG_structure_type" and _die_name(die) == name:
                found[name] = _struct(die)
                break
            i = raw.find(needle, i + 1)
    return found


def _die_at(dwarf, offset: int):
    try:
        return dwarf.get_DIE_from_refaddr(offset)
    except Exception:  # a guess inside another DIE's bytes: anything can go wrong
        return None


def _structs_by_walk(dwarf, names: set[str]) -> dict[str, DwarfStruct]:
    """The slow way: every unit's top-level entries (the linker emits each type once)."""
    found: dict[str, DwarfStruct] = {}
    for cu in dwarf.iter_CUs():
        for die in cu.get_top_DIE().iter_children():
            if die.tag != "DW_TAG_structure_type":
                continue
            name = _die_name(die)
            if name in names and name not in found:
                found[name] = _struct(die)
        if len(found) == len(names):
            break
    return found


def _die_name(die) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    v = attr.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _struct(die) -> DwarfStruct:
    members: dict[str, tuple[int, int | None]] = {}
    order = []
    for child in die.iter_children():
        if child.tag != "DW_TAG_member":
            continue
        name = _die_name(child)
        loc = child.attributes.get("DW_AT_data_member_location")
        if name is None or loc is None:
            continue
        members[name] = (_member_offset(loc.value), _type_size(child))
        order.append(name)
    size = die.attributes.get("DW_AT_byte_size")
    return DwarfStruct(size.value if size is not None else 0, members, tuple(order))


def _member_offset(value) -> int:
    """DW_AT_data_member_location: a constant (what Go writes), or DW_OP_plus_uconst."""
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and value[0] == 0x23:  # DW_OP_plus_uconst ULEB128
        v = shift = 0
        for byte in value[1:]:
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return v
    raise SymbolizerError(f"DWARF member location {value!r} is not a constant")


def _type_size(die) -> int | None:
    """Byte size of a member's type, through typedefs (Go names its types directly).
    Go gives pointer types (*T, unsafe.Pointer) no byte size: theirs is the address
    size, not the size of what they point to."""
    for _ in range(8):
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
        size = die.attributes.get("DW_AT_byte_size")
        if size is not None:
            return size.value
        if die.tag == "DW_TAG_pointer_type":
            return die.cu.structs.address_size
    return None
