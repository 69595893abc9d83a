"""Shared fixtures: one small synthetic RFCx dataset and its log-mel cache per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainable import prepare

# Small enough for seconds on 2 cores, large enough for 3 stratified folds over 6 species.
SYNTH = dict(recordings=40, test_recordings=6, species=6, duration=12.0, sample_rate=16000, seed=7)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A synthetic dataset, generated once; tests must not modify it (copy it first)."""
    from trainable.synth import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, **SYNTH)
    return out


@pytest.fixture(scope="session")
def cached_dir(tmp_path_factory, synth_dir) -> Path:
    """The synthetic dataset with its log-mel cache in DATA/logmel; read-only for tests."""
    out = tmp_path_factory.mktemp("cached") / "data"
    shutil.copytree(synth_dir, out)
    assert prepare.main(["--data-dir", str(out), "--workers", "2"]) == 0
    return out


@pytest.fixture
def data_copy(tmp_path, synth_dir) -> Path:
    """A private copy of the synthetic dataset that a test may break."""
    out = tmp_path / "data"
    shutil.copytree(synth_dir, out)
    return out
