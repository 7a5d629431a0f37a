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


@pytest.fixture(scope="session")
def arm_harnesses(tmp_path_factory) -> dict:
    """tests/arm_rows.py's kernels, with and without sdot, linked into a C harness each, as
    {variant: run(kernel name, input file) -> float32 output} (qemu-aarch64 runs them)."""
    import os
    import shutil
    import subprocess
    import sys

    import numpy as np

    if os.uname().machine == "aarch64":
        pytest.skip("on ARM the other tests run these kernels natively")
    missing = [tool for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc") if shutil.which(tool) is None]
    assert not missing, f"{' and '.join(missing)} needed (.ci/run installs qemu-user and gcc-aarch64-linux-gnu)"
    from arm_rows import HARNESS_C

    root = tmp_path_factory.mktemp("arm")
    (root / "harness.c").write_text(HARNESS_C)
    env = {**os.environ, "EDGELLM_GENERIC_SIMD": "1"}

    def runner(binary):
        def run(kernel, case):
            out = case.with_suffix(f".{binary.name}.out")
            subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(binary), kernel, str(case), str(out)],
                           check=True, timeout=300)
            return np.fromfile(out, np.float32)
        return run

    out = {}
    for variant in ("dotprod", "generic"):
        subprocess.run([sys.executable, str(Path(__file__).with_name("arm_rows.py")), variant, str(root / f"{variant}.o")],
                       env=env, check=True, timeout=600)
        subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-o", str(root / variant), str(root / "harness.c"),
                        str(root / f"{variant}.o")], check=True, timeout=300)
        out[variant] = runner(root / variant)
    return out
