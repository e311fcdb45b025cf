"""edge-mnv1 deploy ARTIFACT_DIR --device URL [--device URL ...] [--devices FILE]

Puts the artifact's device program on each device and checks its hello against the manifest
(each kind of device's deploy is in edge_mnv1/device/registry.py). Several devices deploy in
parallel; one failing stops none; exit 1 if any failed.
"""

from __future__ import annotations

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
    from edge_mnv1.artifact.artifact import Artifact
    from edge_mnv1.device.registry import scheme_of
    from edge_mnv1.evaluation import fleet

    urls = fleet.device_urls(args.device, args.devices, default=None)
    art = Artifact.load(args.artifact)  # refuses a tampered artifact before anything is sent
    # Bad URLs and unknown kinds are usage errors, found before any device is touched.
    deployers = {url: scheme_of(url).deployer(args.flash) for url in urls}

    def deploy_one(url: str) -> dict:
        result = dict(deployers[url](url, art))
        result.setdefault("passed", True)
        return result

    outcomes = fleet.run_fleet(urls, deploy_one)
    for o in outcomes:  # a deploy that only says what to do (flash a board) keeps its words
        o.result.setdefault("text", _line(o.result))
    out = fleet.command_result(outcomes, separator="\n")
    if len(urls) > 1:
        out["artifact"] = str(art.path)
    return out
