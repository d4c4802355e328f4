"""The cache layout and its locks: one owner of every name, one holder of every lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from teadist.cache.layout import CacheLayout
from teadist.cache.lock import LockTimeoutError, held, held_if_free
from teadist.errors import ManifestError


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
