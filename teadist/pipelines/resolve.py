"""One way to name a model, for every command: what a MODEL argument means, decided by explicit rules.

A MODEL argument is, in this order:

1. ``hf://ORG/REPO/FILE[@REV]`` — a file on the Hub;
2. ``http://…`` / ``https://…`` — a manifest URL;
3. a path when it contains a ``/`` or starts with ``.`` or ``~`` (``./phi-4-mini``, ``dist/m.json``);
4. otherwise a name: a registry name with or without its tag (``phi-4-mini``, ``phi-4-mini:q3_k_s``,
   any case), a cached model's name, or a cached file's name. A bare word that is no known name
   but a file in the current folder is that file (``teadist verify model.gguf``); a bare word that
   is both is refused, with how to say which one is meant — a file in the current folder never
   takes over a model's name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Literal

from teadist.cache.store import CachedModel, CacheRecord, Member, ModelCache
from teadist.errors import NotFoundError, UsageError
from teadist.formats.manifest import Manifest

Kind = Literal["hub", "url", "path", "name"]


@dataclass(frozen=True)
class Named:
    """What a MODEL argument names: its kind and its text."""

    kind: Kind
    text: str


def looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def registry_manifest(name: str) -> Manifest | None:
    """The registry entry ``name`` names (``NAME`` is its default tag; case does not matter)."""
    from teadist.sources import registry

    found = registry.find(name)
    return None if found is None else found[1]


def find_cached(cache: ModelCache, name: str, models: list[CachedModel] | None = None) -> CachedModel | None:
    """The cached model ``name`` names, in the README's one order (``fetch`` reads names the same way):

    1. a registry name (any case, with or without its tag) is the registry's model — its file, if
       teadist installed it — never another model recorded under that name;
    2. a cached file's name, or a model's recorded name, exactly as ``teadist list`` shows it;
    3. either of those in another case, when exactly one model answers to it.

    Two models answering to the same name is refused (UsageError naming them), never a guess.
    ``models``: the cache's models as a scan just read them (else the cache is scanned here)."""
    models = cache.scan().models if models is None else models
    entry = registry_manifest(name)
    if entry is not None:
        return next((m for m in models if m.head.filename == entry.file.name), None) \
            or next((m for m in models if entry.file.name in m.filenames), None)
    by_file = [m for m in models if name in m.filenames]
    if by_file:
        return by_file[0]  # a file name is one file: one model
    exact = [m for m in models if m.head.name == name]
    if exact:
        return _the_one(exact, name)
    lowered = name.lower()
    return _the_one([m for m in models if lowered == m.head.name.lower()
                     or any(lowered == f.lower() for f in m.filenames)], name)


def _the_one(found: list[CachedModel], name: str) -> CachedModel | None:
    if len(found) > 1:
        files = ", ".join(f"{m.head.filename} ({m.head.name})" for m in found)
        raise UsageError(f"{name!r} names {len(found)} cached models: {files}",
                         hint="name the one you mean by its file name, as `teadist list` shows it")
    return found[0] if found else None


def is_known_name(cache: ModelCache, name: str) -> bool:
    return registry_manifest(name) is not None or find_cached(cache, name) is not None \
        or cache.find_damaged(name) is not None


def _is_the_cached_file(cache: ModelCache, name: str) -> bool:
    model = find_cached(cache, name)
    try:
        return model is not None and os.path.samefile(name, cache.path_for(model.head.filename))
    except OSError:
        return False


def classify(text: str, cache: ModelCache, takes_paths: bool = True) -> Named:
    """Decide what ``text`` names (see the module's rules). ``takes_paths`` False: a command that only
    takes names (``path``, ``rm``), where the current folder plays no part."""
    if text.startswith("hf://"):
        return Named("hub", text)
    if text.startswith(("http://", "https://")):
        return Named("url", text)
    if looks_like_path(text):
        if not takes_paths:
            raise UsageError(f"{text!r} is a path; this command takes a model's name",
                             hint="name it as `teadist list` shows it, or by its file name")
        return Named("path", os.path.expanduser(text))
    if not takes_paths:
        return Named("name", text)
    bare, _, _ = text.partition("#")
    local = os.path.lexists(bare)
    if local and _is_the_cached_file(cache, bare):
        return Named("name", text)  # run from inside the cache: the same file either way
    if local and is_known_name(cache, bare):
        raise UsageError(f"{text!r} is both a model's name and a file in the current folder",
                         hint=f"write ./{text} for the file; for the model, run teadist from another folder")
    return Named("path" if local else "name", text)


def cached_filename(cache: ModelCache, name: str) -> str | None:
    """The file a name stands for: the cached model's first file, else the registry entry's file name,
    else ``name`` itself if it is a .gguf file name."""
    model = find_cached(cache, name)
    if model is not None:
        return model.head.filename
    entry = registry_manifest(name)
    if entry is not None:
        return entry.file.name
    return name if name.endswith(".gguf") and not looks_like_path(name) else None


def verified_in_cache(cache: ModelCache, name: str) -> CacheRecord:
    """The record of the model ``name`` names, if every file of it (each kept shard too) is exactly what
    teadist installed and verified: same size, mtime, ctime and inode as recorded — a record of an older
    teadist that lacks the ctime or inode has its file hashed instead. Anything else at those names (a
    file put there by hand, one changed since) is never handed out. The use is noted for ``prune``
    (least recently used goes first) when the cache is writable and nobody is at work on the model."""
    model = find_cached(cache, name)
    if model is None:
        raise NotFoundError(f"{name!r} is not installed in {cache.root}",
                            hint=f"run `teadist fetch {name}`")
    for member in model.members:
        if not _unchanged(cache, member):
            raise NotFoundError(f"{member.filename} in the cache changed since teadist verified it",
                                hint=f"run `teadist verify {name}`, or `teadist fetch {name}` to get it again")
    _note_use(cache, model.head)
    return model.head


def _unchanged(cache: ModelCache, member: Member) -> bool:
    """The member's file is the one its record vouches for (its full identity, else its bytes)."""
    from teadist.base.hashing import hash_range

    record = member.record
    if record is not None and record.repairing:
        return False  # mid-repair: nothing vouches for its bytes until verify or repair finishes
    if record is not None and record.ctime_ns is not None and record.inode is not None:
        return cache.is_current(record)
    sha, size = member.sha256, member.size if record is None else record.size
    path = cache.path_for(member.filename)
    try:
        before = os.lstat(path)
        if sha is None or not stat.S_ISREG(before.st_mode) or (size is not None and before.st_size != size):
            return False
        if record is not None and record.mtime_ns != before.st_mtime_ns:
            return False
        digest, read = hash_range(path)
        after = os.lstat(path)
    except OSError:
        return False
    same = (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) \
        == (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)
    return same and digest == sha and read == before.st_size


def _note_use(cache: ModelCache, head: CacheRecord) -> None:
    """Best effort: a read-only cache, or a fetch or rm at work on the model (which notes its own use),
    leaves the record as it is — never an error, never a wait."""
    target = cache.target(head.filename)
    try:
        with target.lock_if_free() as got:
            current = cache.read_record(head.filename) if got else None
            if current is not None and current.sha256 == head.sha256 and current.mtime_ns == head.mtime_ns:
                cache.touch(current)
    except OSError:
        pass  # a read-only cache (a container volume): the lookup stands without the note
