"""The memory budget of MCU firmware, per memory region of the target file.

Checked twice by `edge-mnv1 compile` (through budget.check):
- before building, from the artifact's plan (manifest "memory": weights, arena, workspace,
  frame buffer; the target's stack; the kernels' object code; a small allowance for the
  runtime) so that a model that cannot fit is refused before anything is built;
- after linking, from the sections of firmware.elf (read here, no tools needed), exactly.

Each section goes to a region by its address; .data also counts in the code region, where
its initial values are stored. A region over its length raises CheckFailed with the numbers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from edge_mnv1.errors import CheckFailed, UsageError
from edge_mnv1.artifact.firmware import DEFAULT_STACK, placement
from edge_mnv1.artifact.target import Target, load_target

# The runtime, start-up, formatter and libc pieces: measured at 10-12 KB of text and
# rodata with -O2 (docs/mcu.md); the planned figure is this allowance, the linked one exact.
RUNTIME_CODE_ALLOWANCE = 16 * 1024
RUNTIME_DATA_ALLOWANCE = 2 * 1024

# Output sections of the generated linker script -> what they hold.
_KIND = {".vectors": "code", ".text": "code", ".rodata": "code", ".ARM.extab": "code",
         ".ARM.exidx": "code", ".em_weights": "weights", ".em_arena": "arena",
         ".data": "data", ".bss": "data", ".stack": "stack"}


# ---- ELF (32-bit little-endian, what arm-none-eabi-gcc writes) ---------------------------

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


# ---- the check ---------------------------------------------------------------------------

def _region_of(target: Target, addr: int) -> str | None:
    for name, r in target.memory.items():
        if r["origin"] <= addr < r["origin"] + r["length"]:
            return name
    return None


def planned_usage(target: Target, artifact: Path, manifest: dict) -> dict[str, dict[str, int]]:
    """region -> {what: bytes} from the plan, before anything is built."""
    artifact = Path(artifact)
    mem = manifest["memory"]
    where = placement(target)
    kernels = sum(object_code_bytes(p) for p in artifact.glob("kernels*.o"))
    golden = (artifact / "golden.bin").stat().st_size if (artifact / "golden.bin").exists() else 0
    parts = {
        "code": {"kernels": kernels, "runtime (allowance)": RUNTIME_CODE_ALLOWANCE},
        "weights": {"weights": mem["weight_bytes"], "golden data": golden},
        "arena": {"arena": mem["arena_bytes"],
                  "workspace": mem["workspace_bytes_per_thread"] * mem["workspace_threads"]},
        "data": {"frame buffer": mem["frame_buffer_bytes"],
                 "runtime data (allowance)": RUNTIME_DATA_ALLOWANCE},
        "stack": {"stack": int(target.build.get("stack_bytes", DEFAULT_STACK))},
    }
    usage: dict[str, dict[str, int]] = {}
    for use, items in parts.items():
        usage.setdefault(where[use], {}).update(items)
    return usage


def linked_usage(target: Target, elf: Path) -> dict[str, dict[str, int]]:
    """region -> {section: bytes} from the linked firmware."""
    usage: dict[str, dict[str, int]] = {}
    for s in elf_sections(elf):
        region = _region_of(target, s["addr"])
        if region is None:
            raise CheckFailed(f"{elf}: section {s['name']} at {s['addr']:#x} lies in no memory "
                              f"region of {target.name}; check the target's [memory] table")
        usage.setdefault(region, {})
        usage[region][s["name"]] = usage[region].get(s["name"], 0) + s["size"]
        if not s["nobits"] and s["lma"] != s["addr"]:  # initial values stored elsewhere
            load = _region_of(target, s["lma"])
            if load:
                key = f"{s['name']} (load image)"
                usage.setdefault(load, {})[key] = usage.get(load, {}).get(key, 0) + s["size"]
    return usage


def _kind_totals(usage: dict[str, dict[str, int]], linked: bool, where: dict[str, str]) -> dict:
    flash = ram = 0
    for region, items in usage.items():
        for what, n in items.items():
            if linked:
                base = what.split(" ")[0]
                kind = "code" if what.endswith("(load image)") else _KIND.get(base, "code")
            else:
                kind = next(u for u in ("code", "weights", "arena", "data", "stack")
                            if where[u] == region and what in _PLANNED_KEYS[u])
            if kind in ("code", "weights"):
                flash += n
            else:
                ram += n
    return {"flash_bytes": flash, "ram_bytes": ram}


_PLANNED_KEYS = {"code": {"kernels", "runtime (allowance)"},
                 "weights": {"weights", "golden data"},
                 "arena": {"arena", "workspace"},
                 "data": {"frame buffer", "runtime data (allowance)"},
                 "stack": {"stack"}}


def check(target: Target, artifact: Path, manifest: dict, report: dict,
          program: Path | None = None) -> dict:
    """Adds per-region usage to budget.check's report; CheckFailed when a region overflows."""
    where = placement(target)
    linked = program is not None and Path(program).is_file()
    usage = linked_usage(target, Path(program)) if linked else planned_usage(target, artifact, manifest)
    regions = []
    over = []
    for name, r in target.memory.items():
        items = usage.get(name, {})
        used = sum(items.values())
        if not r["use"] and not used:
            continue
        uses = sorted({u for u, reg in where.items() if reg == name}, key=_order)
        regions.append({"name": name, "origin": r["origin"], "size": r["length"], "used": used,
                        "use": uses, "parts": items})
        if used > r["length"]:
            over.append((name, r, used, items))
    report = dict(report)
    report["stage"] = "linked" if linked else "planned"
    report["regions"] = regions
    report.update(_kind_totals(usage, linked, where))
    if over:
        lines = []
        for name, r, used, items in over:
            parts = ", ".join(f"{k} {v:,}" for k, v in sorted(items.items(), key=lambda kv: -kv[1]))
            lines.append(f"{name} ({r['origin']:#010x}) needs {used:,} B of {r['length']:,} B "
                         f"(+{used - r['length']:,} B over: {parts})")
        stage = "the linked firmware" if linked else "the memory plan"
        raise CheckFailed(
            f"the model does not fit {target.name} ({stage}): " + "; ".join(lines)
            + f". Flash needed {report['flash_bytes']:,} B, RAM {report['ram_bytes']:,} B. "
            "Use a smaller alpha or resolution, quantize to int8, or choose a target with more "
            "memory (or move a use to a bigger region in the target's [memory] table).")
    return report


def _order(use: str) -> int:
    return ("code", "weights", "arena", "data", "stack").index(use)


def artifact_budget(artifact: str | Path) -> dict:
    """The budget of a compiled artifact, as `edge-mnv1 info ARTIFACT_DIR` shows it:
    {"target", "budget": report, "text"}. Uses the linked firmware when it is there."""
    from edge_mnv1.artifact import budget

    artifact = Path(artifact)
    try:
        manifest = json.loads((artifact / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{artifact}: not an artifact ({e}); write one with "
                         "`edge-mnv1 compile MODEL.onnx --target T -o DIR`") from None
    target = load_target(manifest["target"])
    elf = artifact / "firmware.elf"
    try:
        report = budget.check(target, artifact, manifest, elf if elf.is_file() else None)
        refused = None
    except CheckFailed as e:
        report, refused = {}, str(e)
    mem = manifest["memory"]
    text = (f"artifact {artifact}: {manifest['target']} ({manifest.get('target_kind', '?')}), "
            f"model {manifest['model']['key']}, emit {manifest.get('emit', '?')}\n"
            f"  arena {mem['arena_bytes']:,} B (liveness bound {mem['liveness_lower_bound']:,} B), "
            f"workspace {mem['workspace_bytes_per_thread']:,} B, weights {mem['weight_bytes']:,} B")
    if report:
        text += "\n" + budget.describe(report)
        if "stage" in report:
            text += ("\n    (regions from the linked firmware.elf)" if report["stage"] == "linked"
                     else "\n    (regions from the memory plan; the firmware is not built)")
        if "flash_bytes" in report:
            text += (f"\n  flash {report['flash_bytes']:,} B (code + weights), RAM "
                     f"{report['ram_bytes']:,} B (arena + workspace + data + stack)")
    if refused:
        text += f"\n  does not fit: {refused}"
    return {"artifact": str(artifact), "target": manifest["target"], "budget": report,
            "fits": refused is None, "text": text}
