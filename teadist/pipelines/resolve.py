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
from dataclasses import dataclass
from typing import Literal

from teadist.cache.store import CachedModel, CacheRecord, ModelCache
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


def find_cached(cache: ModelCache, name: str) -> CachedModel | None:
    """The cached model ``name`` names: its file name, its recorded name, or a registry name whose file
    teadist installed."""
    model = cache.find(name)
    if model is not None:
        return model
    lowered = name.lower()
    model = next((m for m in cache.scan().models if m.head.name.lower() == lowered), None)
    if model is not None:
        return model
    entry = registry_manifest(name)
    return None if entry is None else cache.find(entry.file.name)


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
    """The record of the model ``name`` names, if the file at its name is exactly what teadist
    installed and verified; its use is noted (``prune`` evicts least recently used). Anything else
    at that name — a file put there by hand, one changed since — is never handed out."""
    model = find_cached(cache, name)
    if model is None:
        raise NotFoundError(f"{name!r} is not installed in {cache.root}",
                            hint=f"run `teadist fetch {name}`")
    target = cache.target(model.head.filename)
    with target.lock_if_free() as got:
        record = cache.read_record(model.head.filename)
        if record is None or not cache.is_current(record):
            raise NotFoundError(f"{model.head.filename} in the cache changed since teadist verified it",
                                hint=f"run `teadist verify {name}`, or `teadist fetch {name}` to get it again")
        if got:  # a fetch or rm at work on it notes its own use; never wait for it here
            cache.touch(record)
    return record
