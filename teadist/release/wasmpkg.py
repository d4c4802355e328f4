"""``teadist package-wasm``: a reproducible ``tea-wasm-llm-{version}.tar.gz``.

Same inputs, same bytes: entries sorted, mtimes fixed (``SOURCE_DATE_EPOCH``), uid/gid 0 with no
owner names, modes normalised (0644, or 0755 for executables and folders), a gzip header with no
name or time. Every path sits under ``tea-wasm-llm-{version}/``. Links are packed as links only
when they resolve, inside the archive, to an entry under that top folder (resolved the way an
extractor would, link by link); a link that leaves it (also one that resolves inside the input
folder by walking out and back in through its name), a dangling link, a link loop, a device or a
FIFO, two entries with one name (``--js`` beside a package's own ``js/``) and an ``--out`` inside
the input are refused before anything is written.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from teadist.base.fsutil import atomic_write, plain_filename_problem
from teadist.errors import NotFoundError, UsageError
from teadist.release.index import VERSION_RE

TARBALL_PREFIX = "tea-wasm-llm"
MAX_EPOCH = 8**11 - 1  # the largest mtime a ustar header holds in octal (year 2242)
MAX_LINK_HOPS = 40  # as Linux's ELOOP limit


@dataclass
class PackageReport:
    path: Path
    size: int
    sha256: str
    files: list[dict[str, object]] = field(default_factory=list)

    @property
    def unpacked(self) -> int:
        return sum(int(str(f["size"])) for f in self.files)


@dataclass
class _Entry:
    arcname: str
    source: Path
    kind: str  # file | dir | link
    link_target: str = ""


def parse_source_date_epoch(text: str) -> int:
    """``SOURCE_DATE_EPOCH``: whole seconds, ASCII digits only, small enough for a tar header."""
    if not re.fullmatch(r"[0-9]{1,12}", text) or int(text) > MAX_EPOCH:
        raise UsageError(f"SOURCE_DATE_EPOCH must be whole seconds from 0 to {MAX_EPOCH}, not {text[:40]!r}")
    return int(text)


def _collect(root: Path, prefix: str) -> list[_Entry]:
    entries: list[_Entry] = []

    def fail(exc: OSError) -> None:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=fail):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            for part in rel.split("/"):
                problem = plain_filename_problem(part)
                if problem:
                    raise UsageError(f"package path {rel!r}: {part!r} {problem}")
            arcname = f"{prefix}/{rel}"
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(_Entry(arcname, path, "link", os.readlink(path)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(_Entry(arcname, path, "dir"))
            elif stat.S_ISREG(st.st_mode):
                entries.append(_Entry(arcname, path, "file"))
            else:
                raise UsageError(f"{rel} is not a regular file, folder or link; refusing")
    return entries


def resolve_in_archive(link: str, target: str, members: Mapping[str, str | None]) -> str:
    """Where a link at ``link`` pointing to ``target`` lands inside the archive, as an extractor
    would resolve it (every link on the way followed). ``members`` maps each name to its link
    target (None for files and folders). Raise UsageError if it leaves the top folder, dangles or
    loops."""
    parts = link.split("/")[:-1]
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if len(parts) <= 1:
                raise UsageError(f"link {link!r} -> {target!r} points outside the top folder {parts[0]!r}")
            parts.pop()
            continue
        parts.append(part)
        name = "/".join(parts)
        if name not in members:
            raise UsageError(f"link {link!r} -> {target!r} points to nothing in the package")
        through = members[name]
        if through is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or through.startswith("/") or "\\" in through:
                raise UsageError(f"link {link!r} -> {target!r} loops or leaves the package")
            parts.pop()
            pending = through.split("/") + pending
    return "/".join(parts)


def _check_links(members: Mapping[str, str | None]) -> None:
    for name, target in members.items():
        if target is None:
            continue
        if not target or target.startswith("/") or "\\" in target:
            raise UsageError(f"link {name!r} -> {target!r} is absolute or malformed; refusing")
        resolve_in_archive(name, target, members)


def package_wasm(pkg_dir: Path, version: str, out_dir: Path, js_dir: Path | None = None,
                 source_date_epoch: int = 0) -> PackageReport:
    """Write ``tea-wasm-llm-{version}.tar.gz`` from a wasm-pack ``pkg`` folder (and optional JS)."""
    if not VERSION_RE.match(version):
        raise UsageError(f"--version {version[:40]!r}: use letters, digits and . + _ - (e.g. 1.2.0)")
    if not 0 <= source_date_epoch <= MAX_EPOCH:
        raise UsageError(f"SOURCE_DATE_EPOCH {source_date_epoch} is out of range")
    if not pkg_dir.is_dir():
        raise NotFoundError(f"wasm package folder not found: {pkg_dir}",
                            hint="run wasm-pack build first, or point PKG_DIR at its output (pkg/)")
    if js_dir is not None and not js_dir.is_dir():
        raise NotFoundError(f"--js folder not found: {js_dir}")
    for folder in (pkg_dir, js_dir):
        if folder is not None and out_dir.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"--out {out_dir} is inside {folder}: the next tarball would pack this one",
                             hint="write the tarball elsewhere, e.g. --out dist/")
    prefix = f"{TARBALL_PREFIX}-{version}"
    entries = _collect(pkg_dir, prefix)
    if js_dir is not None:
        entries += [_Entry(f"{prefix}/js", js_dir, "dir"), *_collect(js_dir, f"{prefix}/js")]
    members: dict[str, str | None] = {prefix: None}
    for entry in entries:
        if entry.arcname in members:
            raise UsageError(f"{entry.arcname} would be packed twice"
                             + (" (the package already has js/: drop --js or rename it)" if js_dir else ""))
        members[entry.arcname] = entry.link_target if entry.kind == "link" else None
    _check_links(members)
    if not any(e.kind == "file" for e in entries):
        raise UsageError(f"{pkg_dir} holds no files to package")
    report_files: list[dict[str, object]] = []
    dest = out_dir / f"{prefix}.tar.gz"
    with atomic_write(dest) as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        top = tarfile.TarInfo(prefix)
        _normalise(top, tarfile.DIRTYPE, 0o755, source_date_epoch)
        tar.addfile(top)
        for entry in sorted(entries, key=lambda e: e.arcname):
            info = tarfile.TarInfo(entry.arcname)
            if entry.kind == "dir":
                _normalise(info, tarfile.DIRTYPE, 0o755, source_date_epoch)
                tar.addfile(info)
            elif entry.kind == "link":
                _normalise(info, tarfile.SYMTYPE, 0o777, source_date_epoch)
                info.linkname = entry.link_target
                tar.addfile(info)
            else:
                # the file checked by lstat, never a link swapped in since
                try:
                    fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
                except OSError as exc:
                    raise UsageError(f"{entry.source}: {exc.strerror}; run again") from None
                with os.fdopen(fd, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        raise UsageError(f"{entry.source} changed while it was packed; run again")
                    _normalise(info, tarfile.REGTYPE, 0o755 if st.st_mode & 0o111 else 0o644, source_date_epoch)
                    info.size = st.st_size
                    tar.addfile(info, fh)
                report_files.append({"path": entry.arcname, "size": info.size})
    from teadist.base.hashing import hash_range

    digest, size = hash_range(dest)
    return PackageReport(dest, size, digest, report_files)


def _normalise(info: tarfile.TarInfo, kind: bytes, mode: int, mtime: int) -> None:
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""


def check_tarball(path: Path) -> list[str]:
    """Names in a tarball; raise UsageError unless every entry is a file, folder or link under one
    top folder, named once, and every link resolves (link by link) to an entry under that folder."""
    names = []
    members: dict[str, str | None] = {}
    top_files: set[str] = set()  # names that are not folders (the top entry must be one)
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
                    raise UsageError(f"{path.name}: unsafe path {name!r}")
                if not (member.isfile() or member.isdir() or member.issym()):
                    raise UsageError(f"{path.name}: {name!r} is not a file, folder or link")
                if name in members:
                    raise UsageError(f"{path.name}: {name!r} appears twice")
                members[name] = member.linkname if member.issym() else None
                if not member.isdir():
                    top_files.add(name)
                names.append(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UsageError(f"{path.name}: not a readable .tar.gz ({exc})") from None
    roots = {n.split("/")[0] for n in names}
    if len(roots) != 1:
        raise UsageError(f"{path.name}: more than one top-level folder")
    [root] = roots
    if root in top_files:
        raise UsageError(f"{path.name}: the top-level entry {root!r} must be a folder")
    for name in names:  # folders other tools leave implicit
        parts = name.split("/")
        for depth in range(1, len(parts)):
            members.setdefault("/".join(parts[:depth]), None)
    try:
        _check_links(members)
    except UsageError as exc:
        raise UsageError(f"{path.name}: {exc.message}") from None
    return names
