"""Reading ELF files without tools: the allocated sections of linked firmware (32-bit
little-endian, what arm-none-eabi-gcc writes) and the code bytes of a relocatable object."""

from __future__ import annotations

import struct
from pathlib import Path

from edge_mnv1.errors import UsageError


def elf_sections(path: Path) -> list[dict]:
    """Allocated sections of an ELF file: name, addr (VMA), lma, size, nobits."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise UsageError(f"{path}: not a 32-bit little-endian ELF file")
    (phoff, shoff) = struct.unpack_from("<II", data, 0x1C)
    (phentsize, phnum, shentsize, shnum, shstrndx) = struct.unpack_from("<HHHHH", data, 0x2A)
    segs = []
    for i in range(phnum):
        p_type, _off, vaddr, paddr, filesz, memsz = struct.unpack_from("<IIIIII", data,
                                                                       phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            segs.append((vaddr, paddr, memsz))
    headers = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = headers[shstrndx][4] if shnum else 0

    def name(off: int) -> str:
        end = data.index(b"\0", strtab_off + off)
        return data[strtab_off + off:end].decode()

    out = []
    for (nm, typ, flags, addr, _off, size, *_rest) in headers:
        if not flags & 0x2 or size == 0:  # SHF_ALLOC
            continue
        lma = addr
        for vaddr, paddr, memsz in segs:
            if vaddr <= addr < vaddr + max(memsz, 1):
                lma = paddr + (addr - vaddr)
                break
        out.append({"name": name(nm), "addr": addr, "lma": lma, "size": size,
                    "nobits": typ == 8})
    return out


def object_code_bytes(path: Path) -> int:
    """Bytes of code and read-only data in a relocatable object (the LLVM kernels)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1:
        return 0
    (shoff,) = struct.unpack_from("<I", data, 0x20)
    (shentsize, shnum) = struct.unpack_from("<HH", data, 0x2E)
    total = 0
    for i in range(shnum):
        _nm, typ, flags, _a, _o, size, *_ = struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize)
        if flags & 0x2 and typ != 8 and not flags & 0x1:  # allocated, has bits, not writable
            total += size
    return total
