"""The Python harness's own cheap checks after a call, run here as a plain module: the
thread count from /proc/self/stat and the /tmp wipe that is skipped while the folder is
unchanged. (The host checks the same from outside on the process backend.)"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.sandbox.harness import harness


def test_thread_count_is_the_kernels() -> None:
    threads = harness.Threads()
    assert threads.count() == len(os.listdir("/proc/self/task"))
    stop = threading.Event()
    extra = threading.Thread(target=stop.wait)
    extra.start()
    try:
        assert threads.count() == len(os.listdir("/proc/self/task"))
    finally:
        stop.set()
        extra.join()


def test_thread_count_falls_back_when_its_file_is_gone() -> None:
    threads = harness.Threads()
    assert threads._fd is not None
    os.close(threads._fd)  # what a script could do to the harness's fd
    assert threads.count() == len(os.listdir("/proc/self/task"))


@pytest.fixture
def wipes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = harness.wipe

    def counting(path: str) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(harness, "wipe", counting)
    return calls


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stamp counts at once, as on a kernel whose tmpfs times are exact (6.13 on)."""
    monkeypatch.setattr(harness.TmpWatch, "SETTLE_NS", 0)


@pytest.mark.usefixtures("settled")
def test_tmp_is_wiped_first_then_only_when_changed(tmp_path: Path, wipes: list[str]) -> None:
    watch = harness.TmpWatch(str(tmp_path))
    (tmp_path / "left").write_text("x")
    watch.wipe()
    assert wipes == [str(tmp_path)] and not any(tmp_path.iterdir())
    watch.wipe()
    assert len(wipes) == 1  # unchanged: no listing
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep").write_text("x")
    watch.wipe()
    assert wipes[1:] == [str(tmp_path), str(tmp_path / "sub")]  # the subfolder too
    assert not any(tmp_path.iterdir())


@pytest.mark.usefixtures("settled")
def test_times_set_back_do_not_hide_a_file(tmp_path: Path, wipes: list[str]) -> None:
    watch = harness.TmpWatch(str(tmp_path))
    watch.wipe()
    before = os.stat(tmp_path)
    (tmp_path / "hidden").write_text("x")
    os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(tmp_path).st_mtime_ns == before.st_mtime_ns
    watch.wipe()
    assert not any(tmp_path.iterdir())  # the ctime moved with the utime


@pytest.mark.usefixtures("settled")
def test_a_replaced_folder_is_wiped(tmp_path: Path, wipes: list[str]) -> None:
    folder = tmp_path / "tmp"
    folder.mkdir()
    watch = harness.TmpWatch(str(folder))
    watch.wipe()
    folder.rmdir()
    folder.mkdir()
    (folder / "new").write_text("x")
    watch.wipe()
    assert not any(folder.iterdir())


def test_a_stamp_younger_than_a_clock_tick_is_not_trusted(
        tmp_path: Path, wipes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 6.13 a change in the same jiffy as the wipe keeps the folder's times:
    until its ctime is older than any tick, /tmp is listed again."""
    watch = harness.TmpWatch(str(tmp_path))
    (tmp_path / "left").write_text("x")  # the ctime is now
    watch.wipe()
    watch.wipe()
    assert len(wipes) == 2  # a stamp this fresh could hide a change: listed again
    later = time.time_ns() + harness.TmpWatch.SETTLE_NS
    monkeypatch.setattr(harness, "time", SimpleNamespace(time_ns=lambda: later))
    watch.wipe()  # the ctime is older than any tick now: the stamp counts
    watch.wipe()
    assert len(wipes) == 3
