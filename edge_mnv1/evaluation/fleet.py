"""Several devices at once: one thread per device, each result kept, one failure stops none.

Devices come from repeated `--device URL` and from `--devices FILE` (one URL per line, `#`
starts a comment). A command run over a fleet reports
{"devices": [{"url", "passed", ...its result, or "error"}], "passed": all passed}.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from urllib.parse import urlsplit

from edge_mnv1 import log
from edge_mnv1.errors import EdgeError, UsageError

# Devices whose programs run on this machine's CPU: timed sections of two of them must not
# overlap, or each measures the other.
THIS_MACHINE = threading.Lock()
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


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


def run_fleet(urls: list[str], fn, max_workers: int | None = None) -> list[dict]:
    """fn(url) -> result dict, for every URL in parallel threads; results in URL order.

    An exception becomes that device's entry: the partial result the exception carries
    (`e.result`, if any) with passed False, error, exit_code, and the exception itself under
    "_exception" (for a single-device command to re-raise; never serialised)."""
    def one(url):
        try:
            result = dict(fn(url))
            result.setdefault("device", url)
            result["url"] = url
            return result
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - every device's failure is reported, not fatal
            partial = getattr(e, "result", None)
            entry = dict(partial) if isinstance(partial, dict) else {}
            entry.update({"url": url, "device": url, "passed": False, "error": str(e),
                          "error_type": type(e).__name__,
                          "exit_code": e.exit_code if isinstance(e, EdgeError) else 1,
                          "_exception": e})
            if len(urls) > 1:
                log.info(f"fleet: {url}: {type(e).__name__}: {e}")
            return entry

    if len(urls) == 1:
        return [one(urls[0])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or len(urls),
                                               thread_name_prefix="device") as pool:
        return list(pool.map(one, urls))


def combine(results: list[dict]) -> dict:
    devices = [{k: v for k, v in r.items() if k not in ("text", "_exception")} for r in results]
    return {"devices": devices, "passed": bool(devices) and all(d.get("passed") for d in devices),
            "passed_devices": [d["url"] for d in devices if d.get("passed")],
            "failed_devices": [d["url"] for d in devices if not d.get("passed")]}


def summary_line(results: list[dict]) -> str:
    ok = [r["url"] for r in results if r.get("passed")]
    bad = [r["url"] for r in results if not r.get("passed")]
    return (f"fleet: {len(ok)} of {len(results)} devices passed"
            + (f"; failed: {', '.join(bad)}" if bad else ""))


def pop_single(results: list[dict]) -> dict:
    """A one-device command's result: re-raises that device's exception, if it had one."""
    r = results[0]
    exc = r.pop("_exception", None)
    if exc is not None:
        raise exc
    return r
