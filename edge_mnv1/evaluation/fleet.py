"""Several devices at once: one thread per device, each outcome kept, one failure stops none.

Devices come from repeated `--device URL` and from `--devices FILE` (one URL per line, `#`
starts a comment). A command run over a fleet reports
{"devices": [{"url", "passed", ...its result, or "error"}], "passed": all passed}.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from edge_mnv1 import log
from edge_mnv1.errors import EdgeError, UsageError

# Devices whose programs run on this machine's CPU: timed sections of two of them must not
# overlap, or each measures the other.
THIS_MACHINE = threading.Lock()
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass
class Outcome:
    """One device's part of a command: its result as reported (url, device, passed, ...;
    for a failure the partial result the exception carried, with error, error_type and
    exit_code) and the exception itself, which a one-device command re-raises."""

    url: str
    result: dict
    exception: Exception | None = None

    @property
    def passed(self) -> bool:
        return bool(self.result.get("passed"))


def read_devices_file(path) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UsageError(f"--devices {p}: cannot read it ({e}); give a file with one device "
                         "URL per line") from None
    urls = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    urls = [u for u in urls if u]
    if not urls:
        raise UsageError(f"--devices {p}: no device URLs in it (one per line, # comments)")
    return urls


def device_urls(devices: list[str] | None, devices_file=None, default: str | None = "local"):
    """The URLs of a command, in order: --device ones, then the --devices file's."""
    urls = list(devices or [])
    if devices_file:
        urls += read_devices_file(devices_file)
    if not urls:
        if default is None:
            raise UsageError("no device: give --device URL (or --devices FILE)")
        urls = [default]
    return urls


def on_this_machine(url: str) -> bool:
    """Whether the device's program competes with this process for this machine's CPU."""
    if url in ("local", "emulated"):
        return True
    try:
        return (urlsplit(url).hostname or "") in _LOOPBACK
    except ValueError:
        return False


def timed_section(url: str):
    """The lock a device's timed section holds: this machine's, when its program runs here."""
    return THIS_MACHINE if on_this_machine(url) else contextlib.nullcontext()


def run_fleet(urls: list[str], fn: Callable[[str], dict],
              max_workers: int | None = None) -> list[Outcome]:
    """fn(url) -> result dict, for every URL in parallel threads; outcomes in URL order.

    An exception becomes that device's outcome: the partial result the exception carries
    (`e.result`, if any) with passed False, error, error_type and exit_code."""
    def one(url: str) -> Outcome:
        try:
            result = dict(fn(url))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - every device's failure is reported, not fatal
            partial = getattr(e, "result", None)
            entry = dict(partial) if isinstance(partial, dict) else {}
            entry.update({"url": url, "device": url, "passed": False, "error": str(e),
                          "error_type": type(e).__name__,
                          "exit_code": e.exit_code if isinstance(e, EdgeError) else 1})
            if len(urls) > 1:
                log.info(f"fleet: {url}: {type(e).__name__}: {e}")
            return Outcome(url, entry, e)
        result.setdefault("device", url)
        result["url"] = url
        return Outcome(url, result)

    if len(urls) == 1:
        return [one(urls[0])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or len(urls),
                                               thread_name_prefix="device") as pool:
        return list(pool.map(one, urls))


def combine(outcomes: list[Outcome]) -> dict:
    """The fleet's result: every device's result (without its text) and who passed."""
    devices = [{k: v for k, v in o.result.items() if k != "text"} for o in outcomes]
    return {"devices": devices, "passed": bool(devices) and all(d.get("passed") for d in devices),
            "passed_devices": [d["url"] for d in devices if d.get("passed")],
            "failed_devices": [d["url"] for d in devices if not d.get("passed")]}


def summary_line(outcomes: list[Outcome]) -> str:
    ok = [o.url for o in outcomes if o.passed]
    bad = [o.url for o in outcomes if not o.passed]
    return (f"fleet: {len(ok)} of {len(outcomes)} devices passed"
            + (f"; failed: {', '.join(bad)}" if bad else ""))


def command_result(outcomes: list[Outcome], separator: str = "\n\n") -> dict:
    """What a command over these devices returns, each device's result holding its "text":
    one device, its own result (its exception re-raised, if it had one); several, the
    fleet's combined result, their texts one after the other and the fleet's summary line."""
    if len(outcomes) == 1:
        only = outcomes[0]
        if only.exception is not None:
            raise only.exception
        return only.result
    combined = combine(outcomes)
    combined["text"] = separator.join([*(o.result.get("text", "") for o in outcomes),
                                       summary_line(outcomes)])
    return combined
