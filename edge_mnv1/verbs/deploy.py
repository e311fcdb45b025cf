"""edge-mnv1 deploy ARTIFACT_DIR --device URL [--device URL ...] [--devices FILE]

Puts the artifact's device program on each device and checks its hello against the manifest.
Each device kind's module under edge_mnv1/device/ has `deploy(url, artifact, manifest,
target) -> dict`; `local` has nothing to upload and only checks the program's hello.
Several devices deploy in parallel; one failing stops none; exit 1 if any failed.
"""

from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path

from edge_mnv1.errors import UsageError

HELP = ("upload the artifact's device program to one or more devices (only what changed, "
        "atomically) and check that each runs this model")


def add_arguments(p):
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    p.add_argument("--device", "-d", action="append", metavar="URL",
                   help="device URL, repeatable: ssh://user@host[:port][/dir][?identity=KEY&"
                        "known_hosts=FILE&accept_new=1], emulated, local, serial://...")
    p.add_argument("--devices", metavar="FILE",
                   help="a file of device URLs, one per line (# comments); deployed in parallel")
    p.add_argument("--flash", action="store_true",
                   help="serial devices: run the target's board.flash_command (without it, "
                        "the command is printed)")


def deploy_local(url, artifact, manifest, target) -> dict:
    """Nothing to upload: `local` runs the program in the artifact directory."""
    from edge_mnv1.device.connect import open_device

    t0 = time.monotonic()
    with open_device("local", artifact, manifest, timeout=60, retries=1) as dev:
        hello = dev.hello
    return {"device": url, "dir": str(artifact), "uploaded": [], "skipped": [], "bytes": 0,
            "hello": hello, "seconds": round(time.monotonic() - t0, 3),
            "note": "local runs the program where it is; nothing to upload"}


def deploy_function(url: str):
    """The `deploy` of the URL's device module, or a UsageError saying there is none."""
    from edge_mnv1.device.connect import SCHEMES, scheme_of

    scheme = scheme_of(url)
    if scheme == "local":
        return deploy_local
    module = f"edge_mnv1.device.{SCHEMES[scheme]}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise UsageError(f"device {url!r}: this edge_mnv1 has no support for {scheme} devices "
                         f"yet ({module} is missing)") from None
    if scheme == "ssh":
        mod.parse_url(url)  # a malformed URL is bad usage, found before any device is touched
    fn = getattr(mod, "deploy", None)
    if fn is None:
        raise UsageError(f"device {url!r}: {scheme} devices cannot be deployed to by edge-mnv1 "
                         f"({module} has no deploy()); flash the program with the board's own "
                         "tool, then use run/parity/bench")
    return fn


def deploy_one(url: str, artifact: Path, manifest: dict, target, flash: bool = False) -> dict:
    fn = deploy_function(url)
    kw = {"flash": True} if flash and "flash" in inspect.signature(fn).parameters else {}
    result = dict(fn(url, artifact, manifest, target, **kw))
    result.setdefault("passed", True)
    return result


def _line(r: dict) -> str:
    if not r.get("passed"):
        return f"{r['url']}: FAILED: {r.get('error')}"
    hello = r.get("hello") or {}
    what = (f"uploaded {', '.join(r['uploaded'])} ({r['bytes']} bytes)" if r.get("uploaded")
            else "up to date (nothing uploaded)")
    emu = " [emulated]" if r.get("emulated") else ""
    return (f"{r['url']}: {what} in {r.get('seconds', 0):.2f} s to {r.get('dir', '?')}{emu}; "
            f"hello: model {hello.get('model')}, input {hello.get('input', {}).get('shape')}")


def run(args) -> dict:
    from edge_mnv1.evaluation import fleet
    from edge_mnv1.artifact.artifact import load_manifest
    from edge_mnv1.artifact.target import load_target

    urls = fleet.device_urls(args.device, args.devices, default=None)
    artifact = Path(args.artifact)
    manifest = load_manifest(artifact)  # refuses a tampered artifact before anything is sent
    target = load_target(manifest["target"])
    for url in urls:
        deploy_function(url)  # bad URLs and unsupported kinds are usage errors, before any work
    results = fleet.run_fleet(urls, lambda url: deploy_one(url, artifact, manifest, target,
                                                          args.flash))
    if len(urls) == 1:
        r = fleet.pop_single(results)
        r["text"] = _line(r)
        r.setdefault("passed", True)
        return r
    out = fleet.combine(results)
    out["artifact"] = str(artifact)
    out["text"] = "\n".join([*(_line(r) for r in results), fleet.summary_line(results)])
    return out
