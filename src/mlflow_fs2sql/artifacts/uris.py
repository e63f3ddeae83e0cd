"""Artifact URIs: compare them in every form a store holds, map roots, join paths.

A FileStore written on one machine and read on another holds the same place in many spellings:
``file:///home/alice/mlruns/1``, ``/home/alice/mlruns/1``, ``file:///C:/Users/alice/mlruns/1``,
``C:\\Users\\alice\\mlruns\\1``, WSL's ``/mnt/c/Users/alice/mlruns/1``, relative ``./mlruns/1`` or
``../../mlruns/1``, ``%20`` for a space in ``file:`` URIs, and ``mlflow-artifacts:/1`` where a
server proxied the artifacts. ``Place`` is one comparable form of all of them: local places are
POSIX paths (backslashes turned round, the drive letter lower-cased, ``/mnt/<d>/`` read as
``<d>:/``, ``%XX`` decoded in ``file:`` URIs only); other URIs keep scheme, host and path.
Nothing here touches the file system or imports MLflow.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..errors import Fs2sqlError

LOCAL = "local"
PROXIED_ROOT = "mlflow-artifacts:/"  # MLflow's DEFAULT_ARTIFACTS_URI, the server's default root
_DRIVE_PATH = re.compile(r"^[A-Za-z]:([\\/]|$)")  # C:\x or C:/x
_DRIVE = re.compile(r"^/?([A-Za-z]):(/|$)")
_WSL = re.compile(r"^/mnt/([A-Za-z])(/|$)")


@dataclass(frozen=True)
class Place:
    """Where a URI points, comparable across spellings: ``space`` is ``local`` or
    ``scheme://host``; ``path`` is normalised (no trailing slash; relative paths stay relative)."""

    space: str
    path: str

    @property
    def is_local(self) -> bool:
        return self.space == LOCAL

    def remainder(self, root: "Place") -> Optional[str]:
        """The path below ``root`` ('' for root itself), or None when not below it."""
        if self.space != root.space:
            return None
        if self.path == root.path:
            return ""
        prefix = root.path if root.path.endswith("/") else root.path + "/"
        if root.path in ("", "."):
            return None if self.path.startswith(("/", "..")) else self.path
        return self.path[len(prefix):] if self.path.startswith(prefix) else None


def place(uri: str) -> Place:
    """The comparable form of an artifact URI or path (see the module docstring)."""
    text = uri.strip()
    if _DRIVE_PATH.match(text):
        return Place(LOCAL, _local(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = unquote(parts.path)
        host = parts.netloc
        if re.match(r"^[A-Za-z]:$", host):  # file://C:/x
            path = host + path
        elif host and host.lower() != "localhost":  # a UNC share: file://server/share/x
            path = "//" + host + path
        return Place(LOCAL, _local(path))
    if not scheme:
        return Place(LOCAL, _local(text))
    path = posixpath.normpath(parts.path) if parts.path else "/"
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return Place(f"{scheme}://{parts.netloc}", path.rstrip("/") or "/")


def _local(path: str) -> str:
    path = path.replace("\\", "/")
    wsl = _WSL.match(path)
    if wsl:  # WSL sees C:\ as /mnt/c/
        path = wsl.group(1) + ":/" + path[wsl.end():]
    drive = _DRIVE.match(path)
    if drive:
        path = drive.group(1).lower() + ":/" + path[drive.end():]
    unc = path.startswith("//")
    path = posixpath.normpath(path) if path else "."
    if unc and not path.startswith("//"):
        path = "/" + path
    if re.match(r"^[a-z]:$", path):
        path += "/"
    return path if path in ("/", "//") or re.match(r"^[a-z]:/$", path) else path.rstrip("/")


def is_local(uri: Optional[str]) -> bool:
    return bool(uri) and place(uri).is_local


def scheme_of(uri: str) -> str:
    """The URI's scheme for counting (``file`` for every local form)."""
    p = place(uri)
    return "file" if p.is_local else p.space.split("://", 1)[0]


def local_path(uri: str, base: str) -> Optional[str]:
    """The path on this machine a local URI names (relative ones against ``base``); None for
    remote URIs and for Windows drive paths on POSIX (and the other way round)."""
    p = place(uri)
    if not p.is_local:
        return None
    path = p.path
    if re.match(r"^[a-z]:/", path):
        if os.name != "nt":
            return None
        return path
    if os.name == "nt" and path.startswith("/") and not path.startswith("//"):
        return None
    return os.path.normpath(os.path.join(base, path))


def to_uri(location: str) -> str:
    """A destination as MLflow stores it: a local path becomes an absolute ``file://`` URI (as
    MLflow's ``resolve_uri_if_local`` does); URIs stay as they are, without a trailing slash
    unless the root is bare (``mlflow-artifacts:/``)."""
    text = location.strip()
    if _DRIVE_PATH.match(text) or not urlsplit(text).scheme:
        from pathlib import Path

        return Path(os.path.abspath(os.path.expanduser(text))).as_uri()
    stripped = text.rstrip("/")
    return text if stripped.endswith(":") or stripped.endswith(":/") else stripped


def join(root: str, *parts: str) -> str:
    """``root`` with POSIX ``parts`` appended to its path, as MLflow's ``append_to_uri_path``
    does (``mlflow-artifacts:/`` + ``5`` = ``mlflow-artifacts:/5``). ``file:`` URIs get the parts
    percent-encoded (as ``Path.as_uri``); other schemes take them as they are."""
    rel = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    if not rel:
        return root
    s = urlsplit(root)
    if not s.scheme or _DRIVE_PATH.match(root):
        return posixpath.join(root, rel)
    if s.scheme.lower() == "file":
        rel = quote(rel, safe="/")
    path = s.path.rstrip("/") + "/" + rel
    return urlunsplit((s.scheme, s.netloc, path, s.query, s.fragment))


# -- --artifact-root-map OLD=NEW ------------------------------------------------------------
@dataclass(frozen=True)
class RootMap:
    """One ``OLD=NEW``: URIs at or below OLD (in any spelling) are rewritten to below NEW."""

    old: str
    new: str

    @property
    def old_place(self) -> Place:
        return place(self.old)

    def apply(self, uri: str) -> Optional[str]:
        rest = place(uri).remainder(self.old_place)
        if rest is None:
            return None
        return join(self.new, rest)


def parse_root_maps(values: Sequence[str]) -> Tuple[RootMap, ...]:
    """``["OLD=NEW", ...]`` from the command line; NEW is kept as a URI (a local path becomes a
    ``file://`` URI). The first ``=`` followed by a scheme or path splits; Windows paths and
    ``%`` escapes in OLD are fine."""
    maps = []
    for value in values:
        old, sep, new = _split_map(value)
        if not sep or not old.strip() or not new.strip():
            raise Fs2sqlError(
                f"--artifact-root-map {value!r} is not OLD=NEW.",
                hint="Give the old root as the store's URIs spell it and the new one, e.g. "
                "--artifact-root-map file:///home/alice/mlruns=s3://team-bucket/mlruns "
                "(repeat the option for several roots).")
        maps.append(RootMap(old.strip(), to_uri(new)))
    # Longest OLD first: a more specific root wins over its parent.
    return tuple(sorted(maps, key=lambda m: -len(m.old_place.path)))


def _split_map(value: str) -> Tuple[str, str, str]:
    """Split at the last '=' that is followed by something URI-like (``s3://``, ``/``, ``C:``),
    else at the first '=' (OLD may itself contain '=' in rare paths)."""
    for at in range(len(value) - 1, 0, -1):
        if value[at] == "=" and re.match(r"^([A-Za-z][\w+.-]*:|/|\.|[A-Za-z]:)", value[at + 1:]):
            return value[:at], "=", value[at + 1:]
    return value.partition("=")


def rewrite(uri: Optional[str], maps: Sequence[RootMap]) -> Optional[str]:
    """``uri`` through the first matching map, or None when none matches."""
    if not uri:
        return None
    for m in maps:
        new = m.apply(uri)
        if new is not None:
            return new
    return None
