"""The committed vectors replay to their recorded roots, and regenerating them changes nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from deltachain.vectors import replay

VECTOR_DIR = Path(__file__).parent / "vectors"
FILES = sorted(VECTOR_DIR.glob("*.json"))


def test_there_are_vectors() -> None:
    assert len(FILES) >= 2


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_vector_replays(path: Path) -> None:
    assert replay(json.loads(path.read_text())) == []


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_tampered_vector_fails(path: Path) -> None:
    vector = json.loads(path.read_text())
    vector["post"]["stateRoot"] = "0x" + "11" * 32
    assert any("post state root" in p for p in replay(vector))


def test_generator_reproduces_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("generate", VECTOR_DIR / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, make in module.VECTORS.items():
        assert (VECTOR_DIR / name).read_text() == module.render(make), name
