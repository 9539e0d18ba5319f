"""Just enough ELF64 (little-endian) reading for mlcbuild: section headers and exported symbols.

Used to find the packed import tree inside an exported library (cuda.py) and to name the section
where two builds of one library differ (`build --check`). No pyelftools: a few struct reads.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SHT_SYMTAB, SHT_NOBITS, SHT_DYNSYM = 2, 8, 11


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


def is_elf64(image: bytes) -> bool:
    return image[:4] == b"\x7fELF" and len(image) > 0x40 and image[4] == 2 and image[5] == 1


def sections(image: bytes) -> list[Section]:
    """The section headers, with names resolved through the section name string table."""
    if not is_elf64(image):
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)]
    names = raw[shstrndx][4] if shstrndx < len(raw) else None

    def name(off: int) -> str:
        if names is None:
            return ""
        start = names + off
        return image[start : image.index(b"\0", start)].decode(errors="replace")

    return [Section(name(h[0]), h[1], h[3], h[4], h[5], h[6], h[9]) for h in raw]


def region_at(image: bytes, offset: int) -> str:
    """Which part of an ELF file holds byte `offset`: a section name or a header."""
    try:
        secs = sections(image)
    except (ValueError, struct.error, IndexError):
        return "?"
    for s in secs:
        if s.type != SHT_NOBITS and s.size and s.offset <= offset < s.offset + s.size:
            return s.name or "(unnamed section)"
    (phoff,) = struct.unpack_from("<Q", image, 0x20)
    (shoff,) = struct.unpack_from("<Q", image, 0x28)
    if offset < 0x40:
        return "ELF header"
    if offset >= shoff:
        return "section header table"
    if offset >= phoff:
        return "program headers"
    return "(between sections)"


def symbol_bytes(image: bytes, symbol: str) -> bytes:
    """The bytes at an exported symbol's address, `st_size` long."""
    secs = sections(image)
    for sh in secs:
        if sh.type not in (SHT_SYMTAB, SHT_DYNSYM):
            continue
        strtab = secs[sh.link]
        for off in range(sh.offset, sh.offset + sh.size, sh.entsize):
            name_off, _info, _other, _shndx, value, size = struct.unpack_from("<IBBHQQ", image, off)
            start = strtab.offset + name_off
            if image[start : image.index(b"\0", start)].decode() != symbol:
                continue
            for sec in secs:
                if sec.type != SHT_NOBITS and sec.addr <= value < sec.addr + sec.size:
                    begin = sec.offset + value - sec.addr
                    return image[begin : begin + size]
    raise ValueError(f"symbol {symbol} not found")
