"""The cache layout and its locks: one owner of every name, one holder of every lock."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.cache.layout import CacheLayout
from teadist.cache.lock import LockTimeoutError, held, held_if_free
from teadist.errors import ManifestError
from tests.helpers import Result, write_random


def test_every_name_of_a_target_comes_from_the_layout(tmp_path: Path) -> None:
    target = CacheLayout(tmp_path).target("m.gguf")
    assert target.final == tmp_path / "m.gguf"
    assert target.record == tmp_path / ".teadist" / "records" / "m.gguf.json"
    assert target.lock_path == tmp_path / ".teadist" / "locks" / "m.gguf.lock"
    assert target.files.partial("ab" * 32).parent == tmp_path / ".teadist" / "work" / "m.gguf"
    assert target.files.block_map(target.files.partial("ab" * 32)).name.endswith(".part.blocks")  # issue 12
    for bad in ("../x.gguf", ".teadist", ".hidden.gguf", "a/b.gguf", ""):
        with pytest.raises(ManifestError):
            CacheLayout(tmp_path).target(bad)


def test_a_held_lock_times_out_others_and_its_file_goes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "t.lock"
    with held(path, "t"):
        assert path.exists()
        with held_if_free(path) as free:
            assert not free
        with pytest.raises(LockTimeoutError), held(path, "t", timeout=0.3):
            pass
    assert not path.exists()


def test_locks_removed_at_release_never_have_two_holders(tmp_path: Path) -> None:
    """Many threads take and release one lock whose file is unlinked at each release: a waiter
    that locked the unlinked file must notice and start again, or two would be inside at once."""
    path = tmp_path / "race.lock"
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, most
        for _ in range(150):
            with held(path, "race", timeout=60):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    assert not path.exists()


def test_symlinks_inside_the_layout_are_refused(tmp_path: Path) -> None:
    from teadist.base.fsutil import UnsafePathError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "cache"
    (root / ".teadist").mkdir(parents=True)
    (root / ".teadist" / "work").symlink_to(elsewhere)
    target = CacheLayout(root).target("m.gguf")
    with pytest.raises(UnsafePathError):
        target.files.new_temp()
    assert list(elsewhere.iterdir()) == []


# -- review findings (trust I, second pass) ----------------------------------------------------
def _install(cli: Callable[..., Result], tmp_path: Path, cache: Path, name: str, size: int = 30_000) -> Path:
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    write_random(src, size, seed=size + len(name))
    assert cli("split", src, "--out", tmp_path / "split" / name, "--chunk-size", "10000").code == 0
    done = cli("assemble", tmp_path / "split" / name / f"{name}.manifest.json", "--cache-dir", cache)
    assert done.code == 0, done.err
    return cache / name


def test_a_record_naming_foreign_shards_never_makes_rm_or_verify_touch_them(tmp_path: Path,
                                                                           cli: Callable[..., Result]) -> None:
    """Review finding 3: a crafted or stale record whose shard list names files that are not its own
    shards (another model, a user's file) must not make verify read them or rm delete them."""
    from teadist.cache.store import ModelCache

    cache_dir = tmp_path / "cache"
    own = _install(cli, tmp_path, cache_dir, "a.gguf")
    other = _install(cli, tmp_path, cache_dir, "b.gguf")
    users = cache_dir / "notes.txt"
    users.write_text("mine")
    cache = ModelCache(cache_dir)
    record = cache.read_record("a.gguf")
    assert record is not None
    record.shards = ["b.gguf", "notes.txt"]
    record.group = "a.gguf"
    cache.write_record(record)
    report = cli("verify", "--cache-dir", cache_dir, "--json")
    names = {i["name"] for i in json.loads(report.out)["items"]}
    assert "notes.txt" not in names and list(names).count("b.gguf") <= 1, report.out
    removed = cli("rm", "a.gguf", "--cache-dir", cache_dir)
    assert removed.code == 0, removed.err
    assert users.read_text() == "mine" and other.is_file(), "rm deleted files another record or the user owns"
    assert not own.exists()


def test_a_symlinked_meta_folder_is_never_written_through(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 4: the cache's .teadist (records, locks, work) may not be a symlink: nothing
    is written, locked or deleted through it."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "records").mkdir(parents=True)
    (elsewhere / "records" / "precious.json").write_text("{}")
    (elsewhere / "work" / "m.gguf").mkdir(parents=True)
    (elsewhere / "work" / "m.gguf" / "download.0123456789abcdef.part").write_text("not teadist's")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / ".teadist").symlink_to(elsewhere)
    src = tmp_path / "m.gguf"
    write_random(src, 20_000)
    assert cli("split", src, "--out", tmp_path / "split", "--chunk-size", "10000").code == 0
    result = cli("assemble", tmp_path / "split" / "m.gguf.manifest.json", "--cache-dir", cache_dir)
    assert result.code != 0 and "symlink" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) <= 2, result.err
    before = sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*"))
    assert before == ["records", "records/precious.json", "work", "work/m.gguf",
                      "work/m.gguf/download.0123456789abcdef.part"]
    for command in (["prune", "--partials"], ["prune", "--max-size", "0"], ["list"], ["du"], ["verify"]):
        refused = cli(*command, "--cache-dir", cache_dir)
        assert refused.code != 0 and "symlink" in refused.err and "Traceback" not in refused.err, command
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*")) == before


def test_a_hard_linked_cached_file_is_never_changed_in_place(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 5: bytes another name shares are never modified or truncated: rm unlinks its
    own name only, and a re-fetch/assemble over a damaged hard-linked file replaces the name."""
    cache_dir = tmp_path / "cache"
    model = _install(cli, tmp_path, cache_dir, "h.gguf")
    twin = tmp_path / "twin.gguf"
    os.link(model, twin)
    data = twin.read_bytes()
    with open(model, "r+b") as fh:  # damage it (through either name)
        fh.seek(5)
        fh.write(b"\xff\xfe")
    damaged = twin.read_bytes()
    assert damaged != data and os.stat(model).st_nlink == 2
    from teadist.formats.manifest import load_manifest

    manifest = load_manifest(tmp_path / "split" / "h.gguf" / "h.gguf.manifest.json")
    assert manifest.file.sha256 is not None
    partial = CacheLayout(cache_dir).target("h.gguf").files.partial(manifest.file.sha256, kind="assemble")
    partial.parent.mkdir(parents=True, exist_ok=True)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"a user's file, hard-linked where teadist keeps a partial")
    os.link(victim, partial)
    again = cli("assemble", tmp_path / "split" / "h.gguf" / "h.gguf.manifest.json", "--cache-dir", cache_dir)
    assert again.code == 0, again.err
    assert twin.read_bytes() == damaged, "the other name's bytes were rewritten in place"
    assert victim.read_bytes().startswith(b"a user's file"), "a hard-linked partial was written through"
    assert model.read_bytes() == data
    assert cli("rm", "h", "--cache-dir", cache_dir).code == 0
    assert twin.read_bytes() == damaged


def test_prune_leaves_a_users_part_and_incomplete_files_alone(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 6: prune removes only names the layout says teadist owns; a user's files that
    merely look like an older teadist's partials survive."""
    cache_dir = tmp_path / "cache"
    _install(cli, tmp_path, cache_dir, "k.gguf")
    mine = [cache_dir / ".notes.0123456789abcdef.part", cache_dir / "video.part",
            cache_dir / "x.incomplete", cache_dir / ".backup.lock"]
    for path in mine:
        path.write_text("user data")
    legacy = [cache_dir / ".old.gguf.0123456789abcdef.part", cache_dir / ".old.gguf.0123456789abcdef.part.json"]
    legacy[0].write_bytes(b"\0" * 100)
    legacy[1].write_text('{"url_host": "huggingface.co", "etag": null}')
    result = cli("prune", "--partials", "--cache-dir", cache_dir)
    assert result.code == 0, result.err
    assert [p.name for p in mine if not p.exists()] == []
    assert [p.name for p in legacy if p.exists()] == [], "an older teadist's partial was left"


def test_folders_nested_where_records_belong_are_refused_not_followed(tmp_path: Path,
                                                                     cli: Callable[..., Result]) -> None:
    """Review finding 7: a folder (with folders inside) at a record's name is a damaged record:
    reported by list/verify in one line each, never descended into, and the rest of the cache works."""
    cache_dir = tmp_path / "cache"
    _install(cli, tmp_path, cache_dir, "ok.gguf")
    nested = cache_dir / ".teadist" / "records" / "x.gguf.json" / "deep"
    nested.mkdir(parents=True)
    (nested / "f").write_text("keep")
    listing = cli("list", "--cache-dir", cache_dir, "--json")
    assert listing.code == 0, listing.err
    assert "ok.gguf" in listing.out
    report = cli("verify", "--cache-dir", cache_dir, "--json")
    assert report.code == 3, report.err
    items = {i["name"]: i for i in json.loads(report.out)["items"]}
    assert items["ok.gguf"]["status"] == "OK" and items["x.gguf.json"]["status"] == "DAMAGED"
    removed = cli("rm", "x.gguf", "--cache-dir", cache_dir)
    assert "Traceback" not in removed.err and "Is a directory" not in removed.err, removed.err
    assert (nested / "f").read_text() == "keep"


def _cache_of_one_byte_models(cache_dir: Path, count: int) -> Path:
    """A cache of ``count`` recorded one-byte models m0.gguf, m1.gguf, … (named m0, m1, …)."""
    from teadist.cache.store import CacheRecord

    records = cache_dir / ".teadist" / "records"
    records.mkdir(parents=True)
    for i in range(count):
        name = f"m{i}.gguf"
        (cache_dir / name).write_bytes(b"x")
        record = CacheRecord(filename=name, name=f"m{i}", sha256="a" * 64, size=1, source="test")
        (records / f"{name}.json").write_text(json.dumps(record.to_dict()))
    return cache_dir


def test_commands_over_the_whole_cache_are_linear_in_its_size(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 17: grouping records into models compared each record with every head
    (`record in heads`, a list of dataclasses): 4,000 records took 5 s, 20,000 about two minutes.
    Generous bound: list and du over 20,000 records within 30 s each."""
    cache_dir = _cache_of_one_byte_models(tmp_path / "cache", 20_000)
    outputs = {}
    for command in ("list", "du"):
        started = time.perf_counter()
        result = cli(command, "--cache-dir", cache_dir, "--json")
        assert result.code == 0, result.err
        assert time.perf_counter() - started < 30, command
        outputs[command] = result.out
    assert len(json.loads(outputs["list"])["models"]) == 20_000


@pytest.mark.parametrize("args", [("list",), ("du",), ("list", "m7"), ("du", "m7.gguf")])
def test_list_and_du_read_each_record_once(args: tuple[str, ...], tmp_path: Path, cli: Callable[..., Result],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`list` and `du` (whole cache or one model) parse each of 200 records once, not once to find
    the models and again to show them."""
    from collections import Counter

    from teadist.cache.store import CacheRecord, ModelCache

    cache_dir = _cache_of_one_byte_models(tmp_path / "cache", 200)
    loads: Counter[str] = Counter()
    load = ModelCache._load

    def counted(self: ModelCache, path: Path, filename: str) -> CacheRecord:
        loads[path.name] += 1
        return load(self, path, filename)

    monkeypatch.setattr(ModelCache, "_load", counted)
    result = cli(*args, "--cache-dir", cache_dir, "--json")
    assert result.code == 0, result.err
    assert len(loads) == 200 and set(loads.values()) == {1}, f"records read {sorted(set(loads.values()))} times"
