"""Memory budget: what a program needs (flash, RAM) against what its target has.

For Linux targets there is no fixed budget; the numbers are reported. For an MCU target the
budget is checked twice: from the artifact's plan before anything is built, and from the
linked firmware's sections after, and a model that cannot fit is refused with the numbers."""

from __future__ import annotations

from pathlib import Path

from edge_mnv1.errors import CheckFailed
from edge_mnv1.artifact.target import Target


def check(target: Target, artifact: Path, manifest: dict, program: Path | None = None) -> dict:
    mem = manifest["memory"]
    ram_need = (mem["arena_bytes"] + mem["workspace_bytes_per_thread"] * mem["workspace_threads"]
                + mem["frame_buffer_bytes"])
    report = {"weights": mem["weight_bytes"], "arena": mem["arena_bytes"],
              "workspace": mem["workspace_bytes_per_thread"] * mem["workspace_threads"],
              "frame_buffer": mem["frame_buffer_bytes"], "ram_planned": ram_need}
    if not target.is_mcu:
        return report
    from edge_mnv1.artifact import mcu_budget  # MCU regions, sections of the linked image

    return mcu_budget.check(target, artifact, manifest, report, program)


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
