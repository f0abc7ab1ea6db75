"""What is installed under a root ("facts") and the tool's own record of what it wrote.

This is an I/O edge: everything here reads or writes the target filesystem. The record keeps
paths and hashes, never contents (like chezmoi's state), so it holds no secrets.
"""

from __future__ import annotations

import functools
import grp
import hashlib
import json
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from fcgicompose import names
from fcgicompose.errors import Problem, StateError
from fcgicompose.graph import Kind

RECORD_FORMAT = 1
RECORD_NAME = "state.json"
_KINDS = {kind.value: kind for kind in Kind}


def _kind(value: Any) -> Kind:
    # A dict lookup: Kind(value) costs more, for every file of every plan.
    try:
        return _KINDS[value]
    except (KeyError, TypeError):
        raise ValueError(f"{value!r} is not a valid Kind") from None


def paths_digest(entries: Mapping[str, Any]) -> str:
    return sha256_text("\n".join(sorted(entries)))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@attrs.frozen
class FileFact:
    """One path on the target as it is now."""

    path: str
    exists: bool = False
    is_link: bool = False
    is_other: bool = False  # a directory, device, ...: never ours to touch
    content: str | None = None  # text of a regular file (None if absent or not UTF-8)
    sha256: str = ""
    link_target: str = ""

    def matches(self, content: str | None, link_target: str) -> bool:
        """Whether this is exactly the given file or symlink."""
        if link_target:
            return self.is_link and self.link_target == link_target
        return self.exists and not self.is_link and not self.is_other and self.content == content


@attrs.frozen
class RecordEntry:
    """A file fcgicompose wrote, as it wrote it."""

    path: str
    kind: Kind
    sha256: str = ""
    link_target: str = ""
    apps: tuple[str, ...] = ()
    worker: int = 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind.value, "apps": list(self.apps)}
        if self.link_target:
            data["link_target"] = self.link_target
        else:
            data["sha256"] = self.sha256
        if self.worker:
            data["worker"] = self.worker
        return data

    def matches(self, fact: FileFact) -> bool:
        """Whether the file on disk is still what fcgicompose wrote (no drift)."""
        if self.link_target:
            return fact.is_link and fact.link_target == self.link_target
        return fact.exists and not fact.is_link and fact.sha256 == self.sha256


@attrs.frozen
class Record:
    """The tool's memory of one root: what it wrote, and which generation that was."""

    generation: int = 0
    spec: str = ""
    entries: Mapping[str, RecordEntry] = attrs.field(factory=dict)
    # What produced the files: equal values mean the same files, so plan can skip compiling.
    spec_sha256: str = ""
    tool_version: str = ""
    accounts: tuple[str, ...] = ()  # what the files need on the target, checked by quick plans
    # sha256 of the recorded paths as written; a record edited by hand no longer matches, and
    # a quick plan, which trusts the record's list of files, then steps aside.
    paths_sha256: str = ""

    @property
    def paths_intact(self) -> bool:
        return bool(self.paths_sha256) and self.paths_sha256 == paths_digest(self.entries)

    def to_json(self) -> str:
        data = {
            "format": RECORD_FORMAT,
            "generation": self.generation,
            "spec": self.spec,
            "spec_sha256": self.spec_sha256,
            "paths_sha256": paths_digest(self.entries),
            "tool_version": self.tool_version,
            "accounts": list(self.accounts),
            "files": {path: entry.to_json() for path, entry in sorted(self.entries.items())},
        }
        # One line: thousands of entries, and indent= would make json use its slow encoder.
        return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Record:
        try:
            data: dict[str, Any] = json.loads(text)
            if data.get("format") != RECORD_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            entries = {
                # Positional: this runs for every file of every plan.
                path: RecordEntry(
                    path,
                    _kind(fields["kind"]),
                    str(fields.get("sha256", "")),
                    str(fields.get("link_target", "")),
                    tuple(fields.get("apps", ())),
                    int(fields.get("worker", 0)),
                )
                for path, fields in data["files"].items()
            }
            return cls(
                int(data["generation"]),
                str(data.get("spec", "")),
                entries,
                str(data.get("spec_sha256", "")),
                str(data.get("tool_version", "")),
                tuple(str(a) for a in data.get("accounts", ())),
                str(data.get("paths_sha256", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise StateError(
                [
                    Problem(
                        f"unreadable fcgicompose record: {error}",
                        file=where,
                        hint="restore it from backup, or move it away to start over",
                    )
                ]
            ) from None


def clear_path_cache() -> None:
    """Forget resolved directories: call when a run starts (they may have changed since)."""
    _inside_root.cache_clear()


def host_path(root: Path, path: str) -> Path:
    """The target `path` under `root`; refuses paths whose parents leave the root by symlink."""
    return Path(_host_str(str(root), path))


def _host_str(root: str, path: str) -> str:
    # Strings, not Path objects: a plan resolves tens of thousands of paths, and pathlib's
    # parsing would cost more than reading the files.
    joined = root.rstrip("/") + "/" + path.lstrip("/")
    parent = joined.rpartition("/")[0] or "/"
    if not _inside_root(root, parent):
        raise StateError(
            [
                Problem(
                    f"{parent} leads outside {root} through a symlink",
                    file=joined,
                    hint="fcgicompose never writes through symlinks out of the root",
                )
            ]
        )
    return joined


@functools.lru_cache(maxsize=4096)
def _inside_root(root: str, directory: str) -> bool:
    # A plan reads thousands of files in a handful of directories: resolve each directory
    # once per run, not per file (callers clear the cache when a run starts).
    real_root = os.path.realpath(root)
    real = os.path.realpath(directory)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def read_fact(root: Path, path: str) -> FileFact:
    """Look at one path without following a final symlink."""
    target = _host_str(str(root), path)
    try:
        info = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return FileFact(path)
    if stat.S_ISLNK(info.st_mode):
        return FileFact(path, exists=True, is_link=True, link_target=os.readlink(target))
    if not stat.S_ISREG(info.st_mode):
        return FileFact(path, exists=True, is_other=True)
    with open(target, "rb") as handle:
        data = handle.read()
    try:
        content: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        content = None
    return FileFact(path, exists=True, content=content, sha256=hashlib.sha256(data).hexdigest())


def read_facts(root: Path, paths: Iterable[str]) -> dict[str, FileFact]:
    clear_path_cache()
    return {path: read_fact(root, path) for path in dict.fromkeys(paths)}


def all_as_recorded(root: Path, entries: Mapping[str, RecordEntry]) -> bool:
    """Whether every recorded path still holds exactly what fcgicompose wrote there.

    The same test as `RecordEntry.matches(read_fact(...))`, without building a fact per file:
    this is all a no-change plan does, and it must cost little more than reading the files.
    """
    clear_path_cache()
    top = str(root)
    for path, entry in entries.items():
        target = _host_str(top, path)
        try:
            info = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if entry.link_target:
            if not stat.S_ISLNK(info.st_mode) or os.readlink(target) != entry.link_target:
                return False
        elif not stat.S_ISREG(info.st_mode):
            return False
        else:
            with open(target, "rb") as handle:
                if hashlib.sha256(handle.read()).hexdigest() != entry.sha256:
                    return False
    return True


def record_path(root: Path) -> Path:
    return host_path(root, f"{names.STATE_DIR}/{RECORD_NAME}")


def read_record(root: Path) -> tuple[Record, str]:
    """The record and the sha256 of its bytes ("" when there is none yet)."""
    path = record_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Record(), ""
    return Record.from_json(data.decode("utf-8", "replace"), str(path)), hashlib.sha256(
        data
    ).hexdigest()


class AccountNames:
    """The user or group names of a target: its files, and on the live host also NSS.

    On `/`, accounts from LDAP or SSSD are real to systemd though absent from etc/passwd,
    and NSS cannot be relied on to list them; so names are looked up one by one.
    """

    def __init__(self, listed: set[str], lookup: Callable[[str], object] | None) -> None:
        self.listed = listed
        self.lookup = lookup

    def __contains__(self, name: object) -> bool:
        if name in self.listed:
            return True
        if self.lookup is None or not isinstance(name, str):
            return False
        try:
            self.lookup(name)
        except KeyError:
            return False
        return True


def read_accounts(root: Path) -> tuple[AccountNames, AccountNames] | None:
    """User and group names of the target, or None if it has no etc/passwd (a staging root)."""
    try:
        passwd = host_path(root, "/etc/passwd").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    try:
        group = host_path(root, "/etc/group").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        group = ""  # a passwd without a group file has no groups, not unchecked ones
    users = {line.split(":", 1)[0] for line in passwd.splitlines() if ":" in line}
    groups = {line.split(":", 1)[0] for line in group.splitlines() if ":" in line}
    live = os.path.realpath(root) == "/"
    return (
        AccountNames(users, pwd.getpwnam if live else None),
        AccountNames(groups, grp.getgrnam if live else None),
    )
