"""``teadist package-wasm``: a reproducible ``tea-wasm-llm-{version}.tar.gz``.

Same inputs, same bytes: entries sorted, mtimes fixed (``SOURCE_DATE_EPOCH``), uid/gid 0 with no
owner names, modes normalised (0644, or 0755 for executables and folders), a gzip header with no
name or time. Every path sits under ``tea-wasm-llm-{version}/``; a link whose target resolves
outside the input folder, a device or a FIFO is refused before anything is written.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from teadist.base.fsutil import atomic_write, require_plain_filename
from teadist.errors import NotFoundError, UsageError

TARBALL_PREFIX = "tea-wasm-llm"


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


def _collect(root: Path, prefix: str) -> list[_Entry]:
    real_root = root.resolve()
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            for part in rel.split("/"):
                require_plain_filename(part, f"package path {rel!r}")
            arcname = f"{prefix}/{rel}"
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                resolved = (path.parent / target).resolve()
                if os.path.isabs(target) or not resolved.is_relative_to(real_root):
                    raise UsageError(f"{rel} is a link pointing outside the package ({target}); refusing")
                entries.append(_Entry(arcname, path, "link", target))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(_Entry(arcname, path, "dir"))
            elif stat.S_ISREG(st.st_mode):
                entries.append(_Entry(arcname, path, "file"))
            else:
                raise UsageError(f"{rel} is not a regular file, folder or link; refusing")
    return sorted(entries, key=lambda e: e.arcname)


def package_wasm(pkg_dir: Path, version: str, out_dir: Path, js_dir: Path | None = None,
                 source_date_epoch: int = 0) -> PackageReport:
    """Write ``tea-wasm-llm-{version}.tar.gz`` from a wasm-pack ``pkg`` folder (and optional JS)."""
    require_plain_filename(version, "--version")
    if not pkg_dir.is_dir():
        raise NotFoundError(f"wasm package folder not found: {pkg_dir}",
                            hint="run wasm-pack build first, or point PKG_DIR at its output (pkg/)")
    prefix = f"{TARBALL_PREFIX}-{version}"
    entries = _collect(pkg_dir, prefix)
    if js_dir is not None:
        if not js_dir.is_dir():
            raise NotFoundError(f"--js folder not found: {js_dir}")
        entries += _collect(js_dir, f"{prefix}/js")
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
                mode = 0o755 if entry.source.stat().st_mode & 0o111 else 0o644
                _normalise(info, tarfile.REGTYPE, mode, source_date_epoch)
                info.size = entry.source.stat().st_size
                with open(entry.source, "rb") as fh:
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
    """Names in a tarball; raise UsageError on a path outside its root or a link pointing outside."""
    names = []
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
        roots = {m.name.split("/")[0] for m in members}
        if len(roots) != 1:
            raise UsageError(f"{path.name}: more than one top-level folder")
        for member in members:
            if member.name.startswith("/") or ".." in member.name.split("/"):
                raise UsageError(f"{path.name}: unsafe path {member.name!r}")
            if member.issym() or member.islnk():
                target = (Path(member.name).parent / member.linkname).as_posix()
                if member.linkname.startswith("/") or os.path.normpath(target).startswith(".."):
                    raise UsageError(f"{path.name}: link {member.name!r} points outside")
            if not (member.isfile() or member.isdir() or member.issym()):
                raise UsageError(f"{path.name}: {member.name!r} is not a file, folder or link")
            names.append(member.name)
    return names
