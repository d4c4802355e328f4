"""``teadist package-wasm``: a reproducible ``tea-wasm-llm-{version}.tar.gz``.

Same inputs, same bytes: entries sorted, mtimes fixed (``SOURCE_DATE_EPOCH``), uid/gid 0 with no
owner names, modes normalised (0644, or 0755 for executables and folders), a gzip header with no
name or time. Every path sits under ``tea-wasm-llm-{version}/``. Hidden files and folders
(``.git``, ``.npmrc``, ``.env`` …) are left out, as npm leaves them out of a package. Links are
packed as links only when they resolve, inside the archive, to an entry under that top folder
(resolved the way an extractor would, link by link); a link that leaves it (also one that
resolves inside the input folder by walking out and back in through its name), a dangling link,
a link loop, a device or a FIFO, two entries with one name (``--js`` beside a package's own
``js/``) and an ``--out`` inside the input are refused before anything is written.

The input is read only through descriptors opened from the input folder's own descriptor, one
component at a time without following links, and each file must still be the file (device,
inode) the walk saw: a folder swapped for a link while packing never leads outside the input.

``bundled`` files (``teadist package-wasm`` passes the browser model cache, ``teadist/web``) are
packed under their own folder (``teadist-web/``) with the relative layout they have in the
package, so ``teadist-web/examples/index.html`` finds ``../model-cache.js``; a package that
already has that folder is refused (one owner per name).

``check_tarball`` holds any tarball (``release prepare`` lists the one in its folder) to the same
rules: every entry's folders are folders (never a file, never a link an extractor would write
through), every link resolves to an entry under the top folder, in time linear in the tarball.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import tarfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from teadist.base.fsutil import atomic_write, plain_filename_problem
from teadist.errors import NotFoundError, UsageError
from teadist.release.index import VERSION_RE

TARBALL_PREFIX = "tea-wasm-llm"
MAX_EPOCH = 8**11 - 1  # the largest mtime a ustar header holds in octal (year 2242)
MAX_LINK_HOPS = 40  # as Linux's ELOOP limit
MAX_PATH_BYTES = 4095  # PATH_MAX less its NUL: no longer name or link target is packed or accepted
MAX_RESOLVE_STEPS = 1_000_000  # path components walked for all links of one tarball together
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


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
    rel: str  # path below its input folder
    root: int  # index of its input folder (0: the package, 1: --js; BUNDLED: a file of ``source``)
    kind: str  # file | dir | link
    link_target: str = ""
    identity: tuple[int, int] = (0, 0)  # (device, inode) as the walk saw it
    source: Path | None = None  # a bundled file: read from here


BUNDLED = -1


def parse_source_date_epoch(text: str) -> int:
    """``SOURCE_DATE_EPOCH``: whole seconds, ASCII digits only, small enough for a tar header."""
    if not re.fullmatch(r"[0-9]{1,12}", text) or int(text) > MAX_EPOCH:
        raise UsageError(f"SOURCE_DATE_EPOCH must be whole seconds from 0 to {MAX_EPOCH}, not {text[:40]!r}")
    return int(text)


def _collect(root_fd: int, root: int, prefix: str, shown: Path) -> list[_Entry]:
    """Every non-hidden entry below the folder ``root_fd``, walked through descriptors only."""
    entries: list[_Entry] = []
    stack: list[tuple[int, str]] = [(os.dup(root_fd), "")]
    try:
        while stack:
            dir_fd, rel_dir = stack.pop()
            try:
                for name in sorted(os.listdir(dir_fd)):
                    if name.startswith("."):
                        continue  # hidden: never packed (.git, .npmrc, .env …), as npm leaves them out
                    rel = rel_dir + name
                    problem = plain_filename_problem(name)
                    if problem:
                        raise UsageError(f"package path {rel!r}: {name!r} {problem}")
                    if len(f"{prefix}/{rel}".encode()) > MAX_PATH_BYTES:
                        raise UsageError(f"package path {rel[:80]!r}… is longer than {MAX_PATH_BYTES} bytes")
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    entry = _Entry(f"{prefix}/{rel}", rel, root, "file", identity=(st.st_dev, st.st_ino))
                    if stat.S_ISLNK(st.st_mode):
                        entry.kind, entry.link_target = "link", os.readlink(name, dir_fd=dir_fd)
                    elif stat.S_ISDIR(st.st_mode):
                        entry.kind = "dir"
                        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                        if (os.fstat(child).st_dev, os.fstat(child).st_ino) != entry.identity:
                            os.close(child)
                            raise UsageError(f"{shown / rel} changed while it was read; run again")
                        stack.append((child, rel + "/"))
                    elif not stat.S_ISREG(st.st_mode):
                        raise UsageError(f"{rel} is not a regular file, folder or link; refusing")
                    entries.append(entry)
            except OSError as exc:
                raise UsageError(f"cannot read {shown / rel_dir}: {exc.strerror}; run again") from None
            finally:
                os.close(dir_fd)
    finally:
        for dir_fd, _ in stack:
            os.close(dir_fd)
    return entries


def _bundled_entries(prefix: str, folder: str, bundled: Mapping[str, Path]) -> list[_Entry]:
    """``bundled`` (relative path → file) as entries under ``prefix/folder``, with their folders.
    Each file is looked at without following a link at its own name, and must be a regular file."""
    entries: list[_Entry] = []
    folders: set[str] = set()
    for rel, listed in sorted(bundled.items()):
        source = Path(os.path.realpath(listed))  # teadist's own files: an install may link them
        parts = rel.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") or plain_filename_problem(p) for p in parts):
            raise UsageError(f"bundled path {rel!r} is not a plain relative path")
        for depth in range(len(parts)):
            sub = "/".join([folder, *parts[:depth]])
            if sub not in folders:
                folders.add(sub)
                entries.append(_Entry(f"{prefix}/{sub}", sub, BUNDLED, "dir"))
        try:
            st = os.lstat(source)
        except OSError as exc:
            raise NotFoundError(f"{source} cannot be packed ({exc.strerror})", hint="reinstall teadist") from None
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{source} is not a regular file; refusing to pack it")
        entries.append(_Entry(f"{prefix}/{folder}/{rel}", f"{folder}/{rel}", BUNDLED, "file",
                              identity=(st.st_dev, st.st_ino), source=source))
    return entries


def _open_entry(root_fd: int, entry: _Entry, shown: Path) -> int:
    """The file the walk saw, opened component by component from the input folder's descriptor
    without following any link; a folder or file swapped since is refused, never read through."""
    if entry.source is not None:  # bundled: its own path, the last component never followed
        try:
            fd = os.open(entry.source, _FILE_FLAGS)
        except OSError as exc:
            raise UsageError(f"{entry.source} changed while it was packed ({exc.strerror}); run again") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != entry.identity:
            os.close(fd)
            raise UsageError(f"{entry.source} changed while it was packed; run again")
        return fd
    parts = entry.rel.split("/")
    current = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = next_fd
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
    except OSError as exc:
        raise UsageError(f"{shown / entry.rel} changed while it was packed ({exc.strerror}); run again") from None
    finally:
        os.close(current)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != entry.identity:
        os.close(fd)
        raise UsageError(f"{shown / entry.rel} changed while it was packed; run again")
    return fd


class _Tree:
    """Archive names as a tree of node ids: a link resolves in steps of O(1), not by re-joining paths."""

    def __init__(self, members: Mapping[str, str | None]) -> None:
        self.children: list[dict[str, int]] = [{}]
        self.link: list[str | None] = [None]
        self.budget = MAX_RESOLVE_STEPS
        for name, target in members.items():
            node = 0
            for part in name.split("/"):
                child = self.children[node].get(part)
                if child is None:
                    child = len(self.link)
                    self.children[node][part] = child
                    self.children.append({})
                    self.link.append(None)
                node = child
            self.link[node] = target

    def node_path(self, name: str) -> list[int]:
        nodes = [0]
        for part in name.split("/"):
            nodes.append(self.children[nodes[-1]][part])
        return nodes

    def resolve(self, link: str, target: str) -> None:
        """Raise UsageError unless the link at ``link`` pointing to ``target`` lands, link by link as
        an extractor follows them, on an entry under the top folder."""
        stack = self.node_path(link)[:-1]  # the folders holding the link: [archive root, top, ...]
        pending = deque(target.split("/"))
        hops = 0
        while pending:
            self.budget -= 1
            if self.budget < 0:
                raise UsageError("its links are too many or too long to check")
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) <= 2:  # would leave the top folder
                    raise UsageError(f"link {link!r} -> {target[:80]!r} points outside the top folder")
                stack.pop()
                continue
            child = self.children[stack[-1]].get(part)
            if child is None:
                raise UsageError(f"link {link!r} -> {target[:80]!r} points to nothing in the package")
            through = self.link[child]
            if through is None:
                stack.append(child)
                continue
            hops += 1
            if hops > MAX_LINK_HOPS or not through or through.startswith("/") or "\\" in through:
                raise UsageError(f"link {link!r} -> {target[:80]!r} loops or leaves the package")
            pending.extendleft(reversed(through.split("/")))  # resolved from the folder holding it


def resolve_in_archive(link: str, target: str, members: Mapping[str, str | None]) -> None:
    """Raise UsageError unless ``link`` -> ``target`` resolves to an entry under the top folder.
    ``members`` maps each name to its link target (None for files and folders)."""
    _Tree(members).resolve(link, target)


def _check_links(members: Mapping[str, str | None]) -> None:
    tree = _Tree(members)
    for name, target in members.items():
        if target is None:
            continue
        if not target or target.startswith("/") or "\\" in target or len(target.encode()) > MAX_PATH_BYTES:
            raise UsageError(f"link {name!r} -> {target[:80]!r} is absolute, malformed or too long; refusing")
        tree.resolve(name, target)


BUNDLED_FOLDER = "teadist-web"  # where package-wasm puts teadist's browser model cache


def package_wasm(pkg_dir: Path, version: str, out_dir: Path, js_dir: Path | None = None,
                 source_date_epoch: int = 0, bundled: Mapping[str, Path] | None = None) -> PackageReport:
    """Write ``tea-wasm-llm-{version}.tar.gz`` from a wasm-pack ``pkg`` folder (and optional JS).

    ``bundled`` (relative path → file) is packed under ``teadist-web/``, keeping those relative
    paths (``teadist package-wasm`` passes ``teadist.web.asset_files()``)."""
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
    roots = [pkg_dir] + ([js_dir] if js_dir is not None else [])
    fds: list[int] = []
    try:
        for folder in roots:
            try:
                fds.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)))
            except OSError as exc:
                raise UsageError(f"cannot open {folder}: {exc.strerror}") from None
        extra = _bundled_entries(prefix, BUNDLED_FOLDER, bundled) if bundled else []
        return _package(roots, fds, prefix, out_dir, source_date_epoch, extra)
    finally:
        for fd in fds:
            os.close(fd)


def _package(roots: list[Path], fds: list[int], prefix: str, out_dir: Path, source_date_epoch: int,
             bundled: list[_Entry]) -> PackageReport:
    entries = _collect(fds[0], 0, prefix, roots[0])
    if len(roots) > 1:
        st = os.fstat(fds[1])
        entries += [_Entry(f"{prefix}/js", "", 1, "dir", identity=(st.st_dev, st.st_ino)),
                    *_collect(fds[1], 1, f"{prefix}/js", roots[1])]
    if not any(e.kind == "file" for e in entries):
        raise UsageError(f"{roots[0]} holds no files to package")
    own = {e.arcname for e in entries}
    if bundled and bundled[0].arcname in own:
        raise UsageError(f"the package already has {BUNDLED_FOLDER}/, where teadist's browser model cache goes",
                         hint=f"rename or remove {roots[0] / BUNDLED_FOLDER}; nothing was written")
    entries += bundled
    members: dict[str, str | None] = {prefix: None}
    for entry in entries:
        if entry.arcname in members:
            raise UsageError(f"{entry.arcname} would be packed twice"
                             + (" (the package already has js/: drop --js or rename it)" if len(roots) > 1 else ""))
        members[entry.arcname] = entry.link_target if entry.kind == "link" else None
    _check_links(members)
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
                root_fd, shown = (fds[entry.root], roots[entry.root]) if entry.root != BUNDLED else (-1, Path())
                with os.fdopen(_open_entry(root_fd, entry, shown), "rb") as fh:
                    st = os.fstat(fh.fileno())
                    executable = st.st_mode & 0o111 and entry.source is None  # bundled: 0644 whatever the install
                    _normalise(info, tarfile.REGTYPE, 0o755 if executable else 0o644, source_date_epoch)
                    info.size = st.st_size
                    try:
                        tar.addfile(info, fh)
                    except OSError as exc:  # tarfile: "unexpected end of data" when it shrank
                        raise UsageError(f"{entry.source or roots[entry.root] / entry.rel} changed while it was "
                                         f"packed ({exc}); run again") from None
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
    top folder, named once, below folders only (never below a file or a link, which an extractor
    would write through), and every link resolves (link by link) to an entry under that folder."""
    names = []
    members: dict[str, str | None] = {}
    kinds: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) or \
                        len(name.encode()) > MAX_PATH_BYTES:
                    raise UsageError(f"{path.name}: unsafe path {name[:120]!r}")
                if not (member.isfile() or member.isdir() or member.issym()):
                    raise UsageError(f"{path.name}: {name!r} is not a file, folder or link")
                if member.issym() and len(member.linkname.encode()) > MAX_PATH_BYTES:
                    raise UsageError(f"{path.name}: the link {name!r} has a target longer than {MAX_PATH_BYTES} bytes")
                if name in members:
                    raise UsageError(f"{path.name}: {name!r} appears twice")
                members[name] = member.linkname if member.issym() else None
                kinds[name] = "folder" if member.isdir() else "link" if member.issym() else "file"
                names.append(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UsageError(f"{path.name}: not a readable .tar.gz ({exc})") from None
    roots = {n.split("/")[0] for n in names}
    if len(roots) != 1:
        raise UsageError(f"{path.name}: more than one top-level folder")
    [root] = roots
    if kinds.get(root, "folder") != "folder":
        raise UsageError(f"{path.name}: the top-level entry {root!r} must be a folder")
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            kind = kinds.setdefault(folder, "folder")  # folders other tools leave implicit
            members.setdefault(folder, None)
            if kind != "folder":
                raise UsageError(f"{path.name}: {name[:120]!r} lies below {folder!r}, which is a {kind}, "
                                 "not a folder")
    try:
        _check_links(members)
    except UsageError as exc:
        raise UsageError(f"{path.name}: {exc.message}") from None
    return names
