"""`edgellm bench` runs and reports every figure; a first run announces its kernel compilation.
(Speed itself lives in benchmarks/README.md, never in an assertion.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgellm.bench import KEYS
from edgellm.cli import main


def test_bench_json_has_every_figure(model_path, capsys):
    assert main(["bench", str(model_path), "-p", "8", "-n", "4", "-r", "1", "-t", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in KEYS + ("bandwidth_gb_per_s",):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["tpot_p95_s"] >= result["tpot_median_s"]
    assert result["bytes_per_token"] > 0.9 * os.path.getsize(model_path)  # every weight, once
    assert "llama_cpp" not in result and result["kv_type"] == "f16"


def test_bench_takes_the_kv_cache_type(model_path, capsys):
    assert main(["bench", str(model_path), "-p", "8", "-n", "4", "-r", "1", "--kv-type", "q8_0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_type"] == "q8_0"


def test_bench_table_names_each_figure(model_path, capsys):
    assert main(["bench", str(model_path), "-p", "4", "-n", "2", "-r", "1"]) == 0
    table = capsys.readouterr().out
    for label in ("prefill tok/s", "decode tok/s", "TTFT", "TPOT median", "TPOT p95", "peak RSS", "GB/s"):
        assert label in table


@pytest.mark.parametrize("flag", [["-p", "0"], ["-n", "0"], ["-r", "0"], ["-t", "0"]])
def test_bench_refuses_bad_counts(model_path, capsys, flag):
    assert main(["bench", str(model_path), *flag]) == 2
    assert "error" in capsys.readouterr().err


def test_vs_llama_cpp_without_llama_cpp_python_says_what_to_install(model_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the bench extra were missing
    assert main(["bench", str(model_path), "-p", "4", "-n", "2", "--vs-llama-cpp"]) == 2
    err = capsys.readouterr().err
    assert "edgellm[bench]" in err and err.count("\n") == 1


@pytest.mark.slow
def test_first_run_announces_compiling_and_second_does_not(tmp_path, model_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    cmd = [sys.executable, "-m", "edgellm.cli", "run", str(model_path), "-p", "Hi", "-n", "2", "--temp", "0"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "compiling kernels (first run only)" in first.stderr
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr
    assert second.stdout == first.stdout


_ENV_REPORT = """
import json, os, sys
import edgellm.bench  # the llama.cpp worker's module: must not load the kernels (their OpenMP default)
loaded = "edgellm.kernels" in sys.modules
from edgellm.kernels import foreign_environ
print(json.dumps([loaded, os.environ.get("OMP_WAIT_POLICY"), foreign_environ().get("OMP_WAIT_POLICY")]))
"""


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_child_processes_get_the_users_openmp_wait_policy(user_value):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    out = subprocess.run([sys.executable, "-c", _ENV_REPORT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded, ours, theirs = json.loads(out.stdout)
    assert not loaded
    assert ours == (user_value or "PASSIVE")  # edgellm's own default, unless the user chose
    assert theirs == user_value


def test_llama_cpp_worker_starts_with_foreign_environ(monkeypatch):
    import edgellm.bench as bench
    from edgellm.errors import EdgeLLMError
    from edgellm.kernels import foreign_environ

    started = []

    class NoWorker:
        def __init__(self, cmd, env=None, **kwargs):
            started.append(env)
            self.stdout = self.stderr = type("Empty", (), {"readline": lambda s: "", "read": lambda s: ""})()
            self.returncode = 1

        def poll(self):
            return 1

    monkeypatch.setattr(bench.subprocess, "Popen", NoWorker)
    with pytest.raises(EdgeLLMError, match="could not load"):
        bench.LlamaCppEngine("model.gguf", 2, 64)
    assert started == [foreign_environ()]
