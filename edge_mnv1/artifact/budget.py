"""Memory budget: what a program needs (flash, RAM) against what its target has.

For Linux targets there is no fixed budget; the numbers are reported. For an MCU target the
budget is checked per memory region of the target file, twice by `edge-mnv1 compile`:
- before building, from the artifact's plan (manifest "memory": weights, arena, workspace,
  frame buffer; model.c's tensor and call tables; the target's stack; the kernels' object
  code; a small allowance for the runtime) so that a model that cannot fit is refused
  before anything is built;
- after linking, from the sections of firmware.elf (read without tools), exactly.

Each section goes to a region by its address; .data also counts in the code region, where
its initial values are stored. A region over its length raises CheckFailed with the numbers.
`artifact_budget` is the same view for `edge-mnv1 info ARTIFACT_DIR`.
"""

from __future__ import annotations

from pathlib import Path

from edge_mnv1.errors import CheckFailed
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.artifact.elf import elf_sections, object_code_bytes
from edge_mnv1.artifact.firmware import DEFAULT_STACK, placement
from edge_mnv1.artifact.target import Target

# The runtime, start-up, formatter and libc pieces: measured at 10-12 KB of text and
# rodata with -O2 (docs/mcu.md); the planned figure is this allowance, the linked one exact.
RUNTIME_CODE_ALLOWANCE = 16 * 1024
RUNTIME_DATA_ALLOWANCE = 2 * 1024

USES = ("code", "weights", "arena", "data", "stack")

# Output sections of the generated linker script -> what they hold.
_KIND = {".vectors": "code", ".text": "code", ".rodata": "code", ".ARM.extab": "code",
         ".ARM.exidx": "code", ".em_weights": "weights", ".em_arena": "arena",
         ".data": "data", ".bss": "data", ".stack": "stack"}

# What the plan counts under each use (the keys of planned_usage's items).
_PLANNED_KEYS = {"code": {"kernels", "runtime (allowance)", "call table"},
                 "weights": {"weights", "golden data"},
                 "arena": {"arena", "workspace"},
                 "data": {"frame buffer", "runtime data (allowance)", "tensor table"},
                 "stack": {"stack"}}


def check(artifact: Artifact, program: Path | None = None) -> dict:
    """The budget report of an artifact; for an MCU target with per-region usage, from the
    memory plan or, given the linked firmware, from its sections. CheckFailed when a region
    overflows."""
    mem = artifact.manifest.memory
    workspace = mem["workspace_bytes_per_thread"] * mem["workspace_threads"]
    report = {"weights": mem["weight_bytes"], "arena": mem["arena_bytes"],
              "workspace": workspace, "frame_buffer": mem["frame_buffer_bytes"],
              "ram_planned": mem["arena_bytes"] + workspace + mem["frame_buffer_bytes"]}
    if not artifact.target.is_mcu:
        return report
    return _check_regions(artifact, report, program)


def describe(report: dict) -> str:
    if not report:
        return ""
    parts = [f"  budget: weights {report['weights']:,} B, RAM planned {report['ram_planned']:,} B "
             f"(arena {report['arena']:,} + workspace {report['workspace']:,} + frame buffer "
             f"{report['frame_buffer']:,})"]
    for region in report.get("regions", []):
        parts.append(f"    {region['name']}: {region['used']:,} of {region['size']:,} B "
                     f"({100 * region['used'] / region['size']:.1f}%) for {', '.join(region['use'])}")
    return "\n".join(parts)


def artifact_budget(artifact: Artifact) -> dict:
    """The budget of a compiled artifact, as `edge-mnv1 info ARTIFACT_DIR` shows it:
    {"artifact", "target", "budget": report, "fits", "text"}. Uses the linked firmware when
    it is there."""
    elf = artifact.path / "firmware.elf"
    try:
        report = check(artifact, elf if elf.is_file() else None)
        refused = None
    except CheckFailed as e:
        report, refused = {}, str(e)
    m = artifact.manifest
    mem = m.memory
    text = (f"artifact {artifact.path}: {m.target_name} ({m.get('target_kind', '?')}), "
            f"model {m.model_key}, emit {m.get('emit', '?')}\n"
            f"  arena {mem['arena_bytes']:,} B (liveness bound {mem['liveness_lower_bound']:,} B), "
            f"workspace {mem['workspace_bytes_per_thread']:,} B, weights {mem['weight_bytes']:,} B")
    if report:
        text += "\n" + describe(report)
        if "stage" in report:
            text += ("\n    (regions from the linked firmware.elf)" if report["stage"] == "linked"
                     else "\n    (regions from the memory plan; the firmware is not built)")
        if "flash_bytes" in report:
            text += (f"\n  flash {report['flash_bytes']:,} B (code + weights), RAM "
                     f"{report['ram_bytes']:,} B (arena + workspace + data + stack)")
    if refused:
        text += f"\n  does not fit: {refused}"
    return {"artifact": str(artifact.path), "target": m.target_name, "budget": report,
            "fits": refused is None, "text": text}


# ---- MCU: usage per memory region --------------------------------------------------------

def planned_usage(artifact: Artifact) -> dict[str, dict[str, int]]:
    """region -> {what: bytes} from the plan, before anything is built."""
    target, mem = artifact.target, artifact.manifest.memory
    golden = artifact.path / "golden.bin"
    parts = {
        "code": {"kernels": sum(object_code_bytes(p) for p in artifact.path.glob("kernels*.o")),
                 "runtime (allowance)": RUNTIME_CODE_ALLOWANCE,
                 # older manifests lack the tables' sizes: counted at link time only
                 "call table": mem.get("call_table_bytes", 0)},
        "weights": {"weights": mem["weight_bytes"],
                    "golden data": golden.stat().st_size if golden.exists() else 0},
        "arena": {"arena": mem["arena_bytes"],
                  "workspace": mem["workspace_bytes_per_thread"] * mem["workspace_threads"]},
        "data": {"frame buffer": mem["frame_buffer_bytes"],
                 "runtime data (allowance)": RUNTIME_DATA_ALLOWANCE,
                 "tensor table": mem.get("tensor_table_bytes", 0)},
        "stack": {"stack": int(target.build.get("stack_bytes", DEFAULT_STACK))},
    }
    where = placement(target)
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


def _region_of(target: Target, addr: int) -> str | None:
    for name, r in target.memory.items():
        if r["origin"] <= addr < r["origin"] + r["length"]:
            return name
    return None


def _check_regions(artifact: Artifact, report: dict, program: Path | None) -> dict:
    """Adds per-region usage to `report`; CheckFailed when a region overflows."""
    target = artifact.target
    where = placement(target)
    linked = program is not None and Path(program).is_file()
    usage = linked_usage(target, Path(program)) if linked else planned_usage(artifact)
    regions, over = [], []
    for name, r in target.memory.items():
        items = usage.get(name, {})
        used = sum(items.values())
        if not r["use"] and not used:
            continue
        uses = sorted({u for u, reg in where.items() if reg == name}, key=USES.index)
        regions.append({"name": name, "origin": r["origin"], "size": r["length"], "used": used,
                        "use": uses, "parts": items})
        if used > r["length"]:
            over.append((name, r, used, items))
    report = dict(report, stage="linked" if linked else "planned", regions=regions,
                  **_kind_totals(usage, linked, where))
    if over:
        _refuse(target, over, linked, report, _patch_note(artifact.manifest.get("patches")))
    return report


def _patch_note(p: dict | None) -> str:
    """Both plans, for a refusal: the arena with the patches tried and layer by layer."""
    if not p:
        return ""
    tried = f"with patches {p['split']}" if p["split"] else "with no patch split that helps"
    return (f" The arena was planned {tried}: {p['arena_estimate_patched']:,} B (input read "
            f"in the frame buffer); layer by layer it needs {p['arena_estimate_layer_by_layer']:,}"
            f" B (bound {p['layer_by_layer_bound']:,} B).")


def _kind_totals(usage: dict[str, dict[str, int]], linked: bool, where: dict[str, str]) -> dict:
    flash = ram = 0
    for region, items in usage.items():
        for what, n in items.items():
            if linked:
                base = what.split(" ")[0]
                kind = "code" if what.endswith("(load image)") else _KIND.get(base, "code")
            else:
                kind = next(u for u in USES if where[u] == region and what in _PLANNED_KEYS[u])
            if kind in ("code", "weights"):
                flash += n
            else:
                ram += n
    return {"flash_bytes": flash, "ram_bytes": ram}


def _refuse(target: Target, over: list, linked: bool, report: dict, note: str = "") -> None:
    lines = []
    for name, r, used, items in over:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(items.items(), key=lambda kv: -kv[1]))
        lines.append(f"{name} ({r['origin']:#010x}) needs {used:,} B of {r['length']:,} B "
                     f"(+{used - r['length']:,} B over: {parts})")
    stage = "the linked firmware" if linked else "the memory plan"
    raise CheckFailed(
        f"the model does not fit {target.name} ({stage}): " + "; ".join(lines)
        + f". Flash needed {report['flash_bytes']:,} B, RAM {report['ram_bytes']:,} B."
        + note + " Use a smaller alpha or resolution, quantize to int8, or choose a target "
        "with more memory (or move a use to a bigger region in the target's [memory] table).")
