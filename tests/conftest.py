"""Shared fixtures: llama.cpp's reference outputs and the bundled real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# shared/ sits beside the checkout (../shared); the reference must exist: a missing one fails.
REFERENCE_DIR = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    assert REFERENCE_DIR.is_dir(), f"llama.cpp reference outputs not found at {REFERENCE_DIR}"
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference(reference_dir) -> dict:
    return json.loads((reference_dir / "gemma3-270m-q4_k_m.json").read_text())


@pytest.fixture(scope="session")
def model_path() -> Path:
    from edgellm.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def llm(model_path):
    import edgellm

    return edgellm.load(model_path, ctx=1024)
