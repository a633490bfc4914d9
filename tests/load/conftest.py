"""Fixtures of the load-and-fault test: a tmp copy of the example actors with sized pools."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from load_support import ManifestsFactory

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ("doubler", "doubler_js", "counter", "ticker")
HERE = Path(__file__).parent


@pytest.fixture
def make_manifests(tmp_path: Path) -> ManifestsFactory:
    """``make(max_queue)``: the example actors (pools of 4 workers, 1 warm) plus the streamer."""

    def make(max_queue: int) -> Path:
        folder = tmp_path / "actors"
        folder.mkdir()
        for actor in EXAMPLES:
            for source in (REPO / "manifests" / actor).glob(f"{actor}.*"):
                shutil.copy(source, folder / source.name)
            manifest = folder / f"{actor}.yaml"
            manifest.write_text(manifest.read_text() + "pool: {min_warm: 1, max_workers: 4, "
                                f"max_queue: {max_queue}}}\n")
        for name in ("streamer.py", "streamer.yaml"):
            shutil.copy(HERE / "actors" / name, folder / name)
        return folder

    return make
