"""An ssh device URL: ssh://[user@]host[:port][/dir][?identity=KEY&known_hosts=FILE&accept_new=1].

The URL's path is the remote directory itself (absolute, or `/~/rel` relative to the remote
home); without one the default is ~/edge_mnv1/<model key>-<target>. New host keys are
accepted only when asked: `?accept_new=1` or EDGE_MNV1_SSH_ACCEPT_NEW=1 (docs/ssh.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.artifact import Manifest

ACCEPT_NEW_ENV = "EDGE_MNV1_SSH_ACCEPT_NEW"
QUERY_KEYS = {"identity", "known_hosts", "accept_new"}
_TRUE = {"1", "yes", "true", "on"}


@dataclass(frozen=True)
class SshUrl:
    url: str
    host: str
    user: str | None = None
    port: int | None = None
    dir: str | None = None          # as given: absolute, or relative to the remote home
    identity: str | None = None
    known_hosts: str | None = None
    accept_new: bool = False

    @property
    def where(self) -> str:
        """user@host:port as a person would write it (no query: keys are not news)."""
        who = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{who}{host}" + (f":{self.port}" if self.port else "")


def parse_url(url: str) -> SshUrl:
    """ssh://[user@]host[:port][/dir][?identity=PATH&known_hosts=PATH&accept_new=1]. The path
    may be percent-encoded (%20 for a space, %3F for ?, %23 for #)."""
    if not url.startswith("ssh://"):
        raise UsageError(f"device {url!r}: not an ssh:// URL")
    rest = url[len("ssh://"):]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    user = None
    if "@" in netloc:
        user, _, netloc = netloc.rpartition("@")
        user = unquote(user)
        if not user:
            raise UsageError(f"device {url!r}: empty user name before '@'")
    port = None
    if netloc.startswith("["):
        host, _, after = netloc[1:].partition("]")
        portpart = after[1:] if after.startswith(":") else None
        if after and portpart is None:
            raise UsageError(f"device {url!r}: cannot read the host {netloc!r}")
    else:
        host, colon, portpart = netloc.partition(":")
        if not colon:
            portpart = None
    if portpart is not None:
        if not portpart.isdigit() or not 0 < int(portpart) < 65536:
            raise UsageError(f"device {url!r}: port {portpart!r} is not a number from 1 to 65535")
        port = int(portpart)
    if not host:
        raise UsageError(f"device {url!r}: no host; write ssh://user@host[:port][/dir]")
    if host.startswith("-") or (user or "").startswith("-") or any(c.isspace() for c in host):
        raise UsageError(f"device {url!r}: a host or user may not start with '-' or hold spaces")
    rdir = None
    if slash and path:
        p = unquote(path)
        if p == "~" or p == "~/":
            raise UsageError(f"device {url!r}: the home directory itself is not a deploy "
                             "directory; name one, e.g. ssh://host/~/edge_mnv1")
        rdir = p[2:] if p.startswith("~/") else "/" + p
        rdir = rdir.rstrip("/") or "/"
        if "\0" in rdir or "\n" in rdir:
            raise UsageError(f"device {url!r}: the directory holds a NUL or newline")
    params = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in QUERY_KEYS:
            raise UsageError(f"device {url!r}: unknown parameter {key!r}; allowed: "
                             f"{', '.join(sorted(QUERY_KEYS))}")
        params[key] = values[-1]
    for key in ("identity", "known_hosts"):
        if key in params:
            if not params[key]:
                raise UsageError(f"device {url!r}: {key}= needs a file name")
            params[key] = str(Path(params[key]).expanduser())
    for key in ("identity", "known_hosts"):
        if any(c in params.get(key, "") for c in "\"'\n"):
            raise UsageError(f"device {url!r}: the {key} file name may not hold quotes or "
                             "newlines (ssh cannot read it); move the file")
    if "identity" in params and not Path(params["identity"]).is_file():
        raise UsageError(f"device {url!r}: identity file {params['identity']} does not exist")
    accept_new = (params.get("accept_new", "").lower() in _TRUE
                  or os.environ.get(ACCEPT_NEW_ENV, "").lower() in _TRUE)
    return SshUrl(url=url, host=host, user=user, port=port, dir=rdir,
                  identity=params.get("identity"), known_hosts=params.get("known_hosts"),
                  accept_new=accept_new)


def default_dir(manifest: Manifest) -> str:
    """Relative to the remote home (an ssh command starts there)."""
    return f"edge_mnv1/{manifest.model_key}-{manifest.target_name}"


def shown_dir(rdir: str) -> str:
    return rdir if rdir.startswith("/") else f"~/{rdir}"
