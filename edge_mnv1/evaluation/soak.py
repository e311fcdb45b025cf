"""The soak: many infer requests through a fault-injecting link, each accepted output checked
bit for bit against the device's own fault-free output for the same input.

1. Over the clean link: hello, then each distinct input twice (the device must be
   deterministic, else "bit for bit" would mean nothing); the second pass also times a
   request, which sets the per-attempt timeout unless one is given (and the slowest clean
   chunk reply the chunks' own).
2. The same connection through device/faults.py's FaultyTransport: N requests, cycling
   through the inputs. A request that fails after its retries is counted and reported, and
   the soak goes on (the client resynchronises on the next frame).
3. Clean link again: hello, which must show that the device did not reset.

Passed means: no wrong output accepted, no request accepted although none of its attempts
reached the device intact, the device did not reset, and the run completed.

Protocol 2 moves an input larger than a chunk (hello's chunk_bytes) as chunks, each re-sent
until it arrives intact, so the link arithmetic is per chunk (link_arithmetic).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact, TensorSpec
from edge_mnv1.device.connect import open_device
from edge_mnv1.device.faults import FaultSpec, FaultyTransport
from edge_mnv1.device.protocol import ERROR_NAMES, RemoteError
from edge_mnv1.device.registry import scheme_of
from edge_mnv1.errors import CheckFailed, DeviceError, UsageError

FRAME_OVERHEAD = 20  # header 16 + payload CRC 4
MAX_CONSECUTIVE_FAILURES = 200  # nothing gets through: stop and say so
MIN_TIMEOUT = 0.1  # s per attempt at least; a reply later than that is still taken if it comes


def make_inputs(spec: TensorSpec, count: int, seed: int) -> list[np.ndarray]:
    """`count` distinct seeded inputs of the model's input shape and dtype."""
    dtype = np.dtype(spec.dtype)
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return [rng.standard_normal(spec.shape).astype(dtype) for _ in range(count)]
    info = np.iinfo(dtype)
    return [rng.integers(info.min, info.max, spec.shape, endpoint=True).astype(dtype)
            for _ in range(count)]


def link_arithmetic(spec: FaultSpec, request_bytes: int, reply_bytes: int,
                    chunk_bytes: int | None = None) -> dict:
    """What the error rates do to frames of these sizes, before anything is sent. With
    `chunk_bytes` (protocol 2) a payload larger than a chunk crosses as chunk frames, each
    sent until it arrives intact: an attempt is one chunk and its 20-byte acknowledgement."""
    out = {"request_frame_bytes": request_bytes, "reply_frame_bytes": reply_bytes,
           "expected_flips_per_request": round(8 * request_bytes * spec.ber, 3)}
    payload = request_bytes - FRAME_OVERHEAD
    if chunk_bytes and payload > chunk_bytes:
        count = -(-payload // chunk_bytes)
        up = spec.intact_probability(chunk_bytes + FRAME_OVERHEAD)
        down = spec.intact_probability(FRAME_OVERHEAD)
        out.update(chunk_bytes=chunk_bytes, chunks_per_request=count,
                   expected_chunk_sends=round(count / max(up * down, 1e-12), 1))
    else:
        up = spec.intact_probability(request_bytes)
        down = spec.intact_probability(reply_bytes)
    return {**out, "p_request_intact": round(up, 5), "p_reply_intact": round(down, 5),
            "p_attempt_clean": round(up * down, 5)}


def soak(artifact: str | Path, url: str, requests: int, faults: FaultSpec, *,
         inputs: int = 8, timeout: float | None = None, retries: int = 8, seed: int = 0,
         progress: bool = True) -> dict:
    if requests < 1 or inputs < 1 or retries < 0:
        raise UsageError("--requests and --inputs must be at least 1, --retries at least 0")
    if url.startswith("faults:"):
        raise UsageError(f"--device {url!r}: give the soak a clean device URL and the faults "
                         "with --faults (the soak needs the clean link for the reference)")
    scheme_of(url)
    art = Artifact.load(artifact)
    xs = make_inputs(art.manifest.input, inputs, seed)
    with open_device(url, art, timeout=120.0, retries=2) as dev:
        client = dev.client
        arithmetic = link_arithmetic(faults, art.manifest.input.nbytes + FRAME_OVERHEAD,
                                     art.manifest.output.nbytes + FRAME_OVERHEAD,
                                     dev.hello.get("chunk_bytes"))
        reference, latency = _clean_reference(client, xs, url)
        attempt_timeout = timeout or max(MIN_TIMEOUT, 5 * latency)
        # A chunk's reply needs no inference: 5x the slowest clean one (at most the attempt's).
        chunk_timeout = min(attempt_timeout, max(MIN_TIMEOUT, 5 * client.slowest_chunk_reply))
        link = dev.inject_faults(faults)  # the same connection, from now on through faults
        client.timeout, client.retries, client.verbose = attempt_timeout, retries, False
        client.chunk_timeout = chunk_timeout
        log.info(f"soak: {requests} requests to {url} through faults {faults}; "
                 f"{attempt_timeout:.3g} s per attempt, {retries} retries; a clean attempt has "
                 f"p={arithmetic['p_attempt_clean']:.3g}")
        run = _faulty_run(client, link, xs, reference, requests, progress,
                          hopeless=arithmetic["p_attempt_clean"] < 0.05)
        link.enabled = False
        device_error = _reset_error(client)
    detected = {"corrupt_replies": client.corrupt_replies, "bad_frames": client.decoder.bad_frames,
                "rejected_by_device": client.rejected_requests, "timeouts": client.timeouts,
                "lost_frames": client.lost_frames, "cut_off_by_device": client.cut_off,
                "retries": client.retried}
    result = {
        "artifact": str(art.path), "device": url, "faults": faults.to_dict(),
        "faults_spec": str(faults), "requests": requests, "distinct_inputs": inputs,
        "attempt_timeout_s": round(attempt_timeout, 4),
        "chunk_timeout_s": round(chunk_timeout, 4), "retries_allowed": retries,
        "link": arithmetic, **run, "detected": detected,
        "injected": link.counts(), "device_ok": device_error is None,
        "device_error": device_error,
    }
    result["passed"] = (result["wrong_accepted"] == 0 and result["accepted_without_intact_request"] == 0
                        and device_error is None and not result["aborted"])
    result["text"] = _text(result)
    return result


def _reset_error(client) -> str | None:
    """Over the clean link again: why the device is not the one the run started with (it
    reset, or does not answer), or None."""
    client.retries = max(client.retries, 3)
    try:
        client.check_not_reset()
    except DeviceError as e:
        return str(e)
    return None


def _clean_reference(client, xs, url) -> tuple[list[bytes], float]:
    """Each input's output over the clean link, twice (bit-equal, or the device is not
    deterministic), and the slowest clean request of the second pass in seconds."""
    first = [client.infer(x).tobytes() for x in xs]
    slowest = 0.0
    for i, x in enumerate(xs):
        t0 = time.monotonic()
        again = client.infer(x).tobytes()
        slowest = max(slowest, time.monotonic() - t0)
        if again != first[i]:
            raise CheckFailed(f"{url}: the same input gave two different outputs over the clean "
                              "link; the device is not deterministic, so a soak cannot tell a "
                              "wrong output from a right one")
    return first, slowest


def _faulty_run(client, link: FaultyTransport, xs, reference, requests: int,
                progress: bool, hopeless: bool = False) -> dict:
    accepted = wrong = failed = unclean_accepted = retried_requests = 0
    failures: dict[str, int] = {}
    examples: list[str] = []
    consecutive, aborted = 0, None
    report_every = max(1, requests // 10)
    t0 = time.monotonic()
    for i in range(requests):
        k = i % len(xs)
        intact0, retried0 = link.intact_writes, client.retried
        try:
            y = client.infer(xs[k])
        except DeviceError as e:  # reported, and the soak goes on
            failed += 1
            consecutive += 1
            kind = (f"device error {ERROR_NAMES.get(e.code, e.code)}" if isinstance(e, RemoteError)
                    else type(e).__name__ if type(e) is not DeviceError else "no valid reply")
            failures[kind] = failures.get(kind, 0) + 1
            if len(examples) < 5:
                examples.append(f"request {i}: {e}")
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                aborted = (f"{consecutive} requests in a row failed, "
                           + ("as the link arithmetic predicts for frames of this size"
                              if hopeless else "more than these error rates explain: the link "
                              "or the device is down") + "; stopped")
                break
        else:
            consecutive = 0
            accepted += 1
            if y.tobytes() != reference[k]:
                wrong += 1
                if len(examples) < 5:
                    examples.append(f"request {i}: WRONG OUTPUT ACCEPTED")
            if link.intact_writes == intact0:
                unclean_accepted += 1  # accepted, yet every attempt reached the device damaged
        retried_requests += client.retried > retried0
        if progress and (i + 1) % report_every == 0:
            log.info(f"soak: {i + 1}/{requests} requests, {accepted} accepted, {failed} failed, "
                     f"{wrong} wrong, {client.retried} retries")
    seconds = time.monotonic() - t0
    done = accepted + failed
    return {"completed_requests": done, "accepted": accepted, "wrong_accepted": wrong,
            "accepted_without_intact_request": unclean_accepted, "failed": failed,
            "failures": failures, "failure_examples": examples,
            "requests_retried": retried_requests, "seconds": round(seconds, 3),
            "requests_per_s": round(done / seconds, 2) if seconds else None,
            "accepted_per_s": round(accepted / seconds, 2) if seconds else None,
            "aborted": aborted}


def _text(r: dict) -> str:
    inj, det, link = r["injected"]["total"], r["detected"], r["link"]
    chunked = (f", in {link['chunks_per_request']} chunks of {link['chunk_bytes']} B "
               f"(~{link['expected_chunk_sends']:g} chunk sends expected)"
               if "chunk_bytes" in link else "")
    lines = [
        f"soak {r['device']}, faults {r['faults_spec']}: {r['completed_requests']}/{r['requests']} "
        f"requests in {r['seconds']:.1f} s ({r['requests_per_s']} requests/s)",
        f"  accepted {r['accepted']} ({r['accepted_per_s']}/s), wrong outputs accepted "
        f"{r['wrong_accepted']}, failed and reported {r['failed']}"
        + (f" {r['failures']}" if r["failures"] else ""),
        f"  injected: {inj['ber']} bit flips, {inj['drop']} bytes dropped, {inj['dup']} duplicated, "
        f"{inj['trunc']} messages cut ({inj['trunc_bytes']} bytes), {inj['delay']} delayed; "
        f"{inj['damaged_messages']} of {inj['messages']} messages damaged",
        f"  detected: {det['rejected_by_device']} frames refused by the device (CRC or cut off "
        f"after its idle gap: {det['cut_off_by_device']}), "
        f"{det['corrupt_replies']} corrupt replies, {det['bad_frames']} bad frames, "
        f"{det['lost_frames']} frames lost, {det['timeouts']} timeouts; {det['retries']} retries in {r['requests_retried']} requests",
        f"  link: {link['request_frame_bytes']} B requests{chunked}, "
        f"{link['reply_frame_bytes']} B replies, {link['expected_flips_per_request']} flips "
        f"expected per request, P(clean attempt) {link['p_attempt_clean']:.3g}",
        f"  device after the run: {'serving, no reset' if r['device_ok'] else r['device_error']}",
    ]
    if r["aborted"]:
        lines.append(f"  ABORTED: {r['aborted']}")
    if r["accepted_without_intact_request"]:
        lines.append(f"  FAULT NOT DETECTED: {r['accepted_without_intact_request']} requests "
                     "accepted although no attempt reached the device intact")
    if link["p_attempt_clean"] < 0.05:
        lines.append("  note: at these rates almost no frame of this size crosses the link "
                     "intact; retries cannot help (lower the error rate or the frame size)")
    lines.append("PASSED" if r["passed"] else "FAILED")
    return "\n".join(lines)
