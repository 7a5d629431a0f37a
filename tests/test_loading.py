"""Loading keeps quantized weights quantized and in the file: nothing is dequantized at load."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import edgellm

pytestmark = pytest.mark.slow


def _mapping_rss_kib(gguf) -> int:
    """Resident KiB of this GGUF file's mapping in this process."""
    start = f"{np.frombuffer(gguf._mmap, np.uint8).ctypes.data:x}-"
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(start))
    return next(int(line.split()[1]) for line in lines[at:] if line.startswith("Rss:"))


def test_the_weights_stay_quantized_in_memory_of_their_own_and_the_files_pages_go(llm):
    """The tensors are views into the mapped file; the model multiplies by copies (the legacy
    types repacked 8 rows at a time), made once the kernels are loaded, each tensor's file pages
    dropped as it is copied: after a prompt and a few decoded tokens the mapping holds no weight
    pages (reading a small tensor there would map the 2 MiB page around it, neighbours included)."""
    tensors = llm.gguf.tensors
    assert tensors["token_embd.weight"].type_name == "Q8_0"
    for t in tensors.values():
        assert not t.data.flags.owndata and not t.data.flags.writeable, t.name
    list(llm.generate("The capital of France is", max_tokens=4, temperature=0.0))
    for layer in (llm.model.blocks[0].attn.wq, llm.model.blocks[0].attn.wo, llm.model.output):
        w = layer.weight
        assert w.repacked and w.data.dtype == np.uint8 and w.data.shape == (w.rows, w.data.shape[1])
        assert not any(np.shares_memory(w.padded, t.data) for t in tensors.values())
    assert _mapping_rss_kib(llm.gguf) < 4 << 10  # KiB: at most the header's last 2 MiB page


def test_rss_after_load_is_about_the_file_size(model_path):
    # A fresh process: RSS after load, before any token, stays below the file size plus the
    # interpreter, numpy and numba (dequantizing the Q8_0 embedding alone would add 671 MB).
    code = (
        "import edgellm, os;"
        "llm = edgellm.load(ctx=512);"
        "rss = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')][0];"
        "print(rss * 1024, os.path.getsize(llm.path))"
    )
    rss, size = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True, timeout=300).stdout.split())
    assert rss < size + 200 * 2**20, (rss / 2**20, size / 2**20)


def test_the_runtimes_type_tables_are_the_gguf_packages():
    """kernels/ggml_types.py and gguf_file.GGUFValueType copy the gguf package's values (so
    that a model loads without importing it): the same name for the same id, the same block
    sizes, and no id gguf knows missing below the highest one here."""
    import gguf

    from edgellm.gguf_file import GGUFValueType
    from edgellm.kernels.ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType

    for ours, theirs in ((GGMLQuantizationType, gguf.GGMLQuantizationType), (GGUFValueType, gguf.GGUFValueType)):
        common = [t for t in ours if t.name in theirs.__members__]
        assert len(common) >= len(ours) - 2, "gguf is older than the table"  # newest types only
        for t in common:
            assert int(theirs[t.name]) == int(t), t.name
        top = max(int(t) for t in ours)
        assert {int(t) for t in theirs if int(t) <= top} <= {int(t) for t in ours}
    for t in GGMLQuantizationType:
        assert t in GGML_QUANT_SIZES, t.name
        if t.name in gguf.GGMLQuantizationType.__members__:
            assert GGML_QUANT_SIZES[t] == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.name]], t.name


_RUN_THEN_REPORT = """
import json, sys, edgellm
from numba.np.ufunc import parallel
llm = edgellm.load(ctx=64)
print("".join(llm.generate("Hi", max_tokens=2)))
print(json.dumps({"modules": sorted({m for m in sys.modules if m.split(".")[0] in ("gguf", "llama_cpp", "regex")}
                                    | ({"numba.np.npyimpl", "numba.np.arraymath", "numba.np.arrayobj", "scipy.linalg"} & set(sys.modules))),
                  "threading_layer_started": bool(parallel._is_initialized)}))
"""


def test_loading_and_running_a_model_takes_in_nothing_it_does_not_use(model_path):
    """Memory a run would hold for nothing: the gguf package (3.5 MiB), llama_cpp, regex (a
    SentencePiece vocabulary does not need it: 1.5 MiB), numba's lowering context (kernels
    load from the cache without it: 8 MiB), numba's array methods (a kernel linking one imports
    numba.np.arraymath at load, which imports scipy.linalg where scipy is installed: 12 MiB),
    the modules of numba's np.empty & co. for their environments (numba.np.arrayobj: 3.4 MiB),
    numba's threading layer (no parallel loop runs)."""
    for _ in range(2):  # the first fills numba's cache if no earlier test has (a compile imports everything)
        out = subprocess.run([sys.executable, "-c", _RUN_THEN_REPORT], capture_output=True, text=True, check=True,
                             timeout=900)
    assert json.loads(out.stdout.split("\n")[-2]) == {"modules": [], "threading_layer_started": False}, out.stdout


_AFTER_THE_RELEASE = """
import sys
import edgellm, edgellm.llm

release = edgellm.llm.release_library_pages
edgellm.llm.release_library_pages = lambda: print("RELEASED", release(), flush=True)
llm = edgellm.load(ctx=512)
ids = llm.tokenize(open(sys.argv[1]).read())[:100]
list(llm.generate(ids, max_tokens=8, temperature=0))
list(llm.chat([{"role": "user", "content": "Hi"}], max_tokens=4))
list(llm.generate("Hello", max_tokens=4, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1))
"""


def test_the_compilers_pages_go_back_once_every_kernel_is_loaded(model_path, reference_dir):
    """Before the first pass every kernel that a run, a chat and sampling use is loaded (or
    compiled), then the libraries' pages (libllvmlite's among them) are given back: nothing is
    loaded or compiled after that (numba's cache log), so LLVM's stay out."""
    import re

    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1"}
    result = subprocess.run([sys.executable, "-c", _AFTER_THE_RELEASE, str(reference_dir / "texts" / "GPL-3.txt")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout
    assert log.count("RELEASED") == 1, log[-3000:]
    after = log[log.index("RELEASED"):]
    assert not re.search(r"\[cache\] data (loaded|saved)", after), after[:3000]
    _, advised = after.splitlines()[0].split()
    assert int(advised) > 50 << 20  # libllvmlite's code alone is ~70 MiB of mappings


def _resident_kib(path: str) -> int:
    kib, mapping = 0, ""
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                mapping = line
            elif line.startswith("Rss:") and mapping.rstrip().endswith(path):
                kib += int(line.split()[1])
    return kib


def _library_file(tmp_path, size=8 << 20):
    path = tmp_path / "libedgellm-test-pages.so"
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # clean page-cache pages: reclaimable without a write-back
    return path, data


def _pages_in_page_cache(m) -> int:
    """How many of mapping m's pages the page cache holds (mincore), mapped here or not."""
    import ctypes
    import mmap

    n = -(-len(m) // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * n)()
    view = np.frombuffer(m, np.uint8)
    address = view.ctypes.data
    del view  # an exported buffer would keep m from closing
    assert ctypes.CDLL(None).mincore(ctypes.c_void_p(address), ctypes.c_size_t(len(m)), vec) == 0
    return sum(v & 1 for v in vec)


def test_release_library_pages_drops_a_read_only_mapping_and_the_page_cache_keeps_it(tmp_path):
    """A read-only private mapping of a file (as a library's code is mapped), every page
    resident: released, its pages leave the process, stay in the page cache (coming back, or
    the next run's start, reads no disk) and read back the same."""
    import mmap

    from edgellm.system import release_library_pages

    path, data = _library_file(tmp_path)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        assert m[:] == data  # every page touched
        assert _resident_kib(str(path)) > 7 << 10
        assert release_library_pages("libedgellm-test-pages") == len(data)
        assert _resident_kib(str(path)) < 1 << 10
        assert _pages_in_page_cache(m) == len(data) // mmap.PAGESIZE
        assert m[:] == data
    finally:
        m.close()


def test_release_library_pages_keeps_the_pages_the_loader_wrote(tmp_path):
    """A library's relocated constants: private pages written after mapping, then made read-only
    (the loader's RELRO). Released, they still hold what was written, not the file's bytes."""
    import ctypes
    import mmap

    from edgellm.system import release_library_pages

    path, data = _library_file(tmp_path, 1 << 20)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        m[:4] = b"RELO"
        view = np.frombuffer(m, np.uint8)
        address = view.ctypes.data
        del view
        assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(address), ctypes.c_size_t(len(m)), mmap.PROT_READ) == 0
        assert release_library_pages("libedgellm-test-pages") == len(data)
        assert m[:4] == b"RELO" and m[4:] == data[4:]
    finally:
        m.close()


def test_the_header_pages_leave_once_read_and_read_back_the_same(model_path):
    """The bundled model's header (a 262k-token vocabulary, ~5 MiB) is read once at load: its
    pages are dropped from this process, and what still views them (the token scores) reads the
    same afterwards."""
    from edgellm.gguf_file import GGUFFile

    gguf = GGUFFile(model_path)
    scores = np.array(gguf.metadata["tokenizer.ggml.scores"])
    header_kib = gguf.header_bytes >> 10
    assert header_kib > 4 << 10 and _mapping_rss_kib(gguf) > header_kib // 2
    gguf.release_header()
    assert _mapping_rss_kib(gguf) <= 2 << 10  # at most the rest of the 2 MiB page the header ends in
    np.testing.assert_array_equal(gguf.metadata["tokenizer.ggml.scores"], scores)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"), reason="no THP (Linux only)")
def test_the_weights_are_mapped_asking_for_huge_pages(model_path):
    """Decode streams every weight: the mapping asks for 2 MiB pages (smaps' VmFlags "hg"), which
    Linux gives when the file enters the page cache after it (4 KiB pages cost the output
    matrix a quarter of its speed in a VM)."""
    from edgellm.gguf_file import GGUFFile

    gguf = GGUFFile(model_path)
    start = f"{np.frombuffer(gguf._mmap, np.uint8).ctypes.data:x}-"
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(start))
    flags = next(line for line in lines[at:] if line.startswith("VmFlags:")).split()[1:]
    assert "hg" in flags


def test_a_first_run_says_it_compiles_and_warms_up_without_changing_the_output(model_path, monkeypatch):
    """On a fresh install the front end's on_compile is called once, and a warm-up pass (a
    prefill-sized batch, then one decode step) compiles the kernels before the timed prefill,
    leaving the cache as it found it."""
    import edgellm.kernels
    from edgellm.llm import WARM_UP_TOKENS

    prompt = "The capital of France is"
    plain = list(edgellm.load(model_path, ctx=256).generate(prompt, max_tokens=8))
    llm = edgellm.load(model_path, ctx=256)
    monkeypatch.setattr(edgellm.kernels, "needs_compiling", lambda: True)
    notices, batches = [], []
    llm.on_compile = lambda: notices.append(llm.kv_cache.n_past)
    forward = llm.model.forward

    def counting(ids, *args, **kwargs):
        batches.append(len(ids))
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(llm.model, "forward", counting)
    assert list(llm.generate(prompt, max_tokens=8)) == plain
    n_prompt = len(llm.tokenize(prompt))
    assert notices == [0]
    assert batches[:3] == [WARM_UP_TOKENS, 1, n_prompt] and batches[3:] == [1] * (len(batches) - 3)
    assert llm.kv_cache.n_past == n_prompt + len(batches) - 3


def test_on_compile_given_to_load_is_called_once_the_file_has_loaded(model_path, monkeypatch):
    """edgellm.load(on_compile=...) says so at load, before the tokenizer's and the kernels'
    compile (a fresh install), and not again at the first pass; nothing is said on a warm one."""
    import edgellm.kernels

    calls = []
    edgellm.load(model_path, ctx=64, on_compile=lambda: calls.append("warm"))
    assert calls == []
    monkeypatch.setattr(edgellm.kernels, "needs_compiling", lambda: True)
    llm = edgellm.load(model_path, ctx=64, on_compile=lambda: calls.append("cold"))
    assert calls == ["cold"]  # during load, before any pass
    assert list(llm.generate("The capital of France is", max_tokens=2))
    assert calls == ["cold"]


@pytest.mark.parametrize("landed", [True, False])
def test_a_warm_up_while_serve_compiles_elsewhere_runs_dry_first(model_path, monkeypatch, landed):
    """While a second process compiles the team's serve, the warm-up runs its passes with the
    team's jobs left out (compiling every other kernel) and waits; then serve loads from the disk
    cache as on a warm start, or, if it did not land there (landed=False), the passes run once
    more for real, compiling it here. The output is unchanged by the dry passes' garbage, which
    leave no warning behind."""
    import warnings

    import edgellm.kernels
    from edgellm.kernels import team
    from edgellm.llm import WARM_UP_TOKENS

    prompt = "The capital of France is"
    plain = list(edgellm.load(model_path, ctx=256).generate(prompt, max_tokens=8))
    llm = edgellm.load(model_path, ctx=256)
    monkeypatch.setattr(edgellm.kernels, "needs_compiling", lambda: True)
    monkeypatch.setattr(team, "start_compiling_serve", lambda: True)
    monkeypatch.setattr(team, "in_disk_cache", lambda kernel: landed)
    waits, dry, batches, posted_dry = [], [], [], []
    monkeypatch.setattr(team, "wait_for_serve", lambda types_sent=True: waits.append(len(dry)))
    real_serve = team.serve

    def serve(ctl, desc, post, idle_spins):
        if post:
            posted_dry.append(team._dry_run.on)
        return real_serve(ctl, desc, post, idle_spins)

    serve.compile = real_serve.compile  # team.load_team_code loads it before the first pass
    monkeypatch.setattr(team, "serve", serve)
    llm.on_compile = lambda: None
    forward = llm.model.forward

    def counting(ids, *args, **kwargs):
        dry.append(team._dry_run.on)
        batches.append(len(ids))
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(llm.model, "forward", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(llm.generate(prompt, max_tokens=8)) == plain
    warm_up = 2 if landed else 4
    n_prompt = len(llm.tokenize(prompt))
    assert batches[: warm_up + 1] == [WARM_UP_TOKENS, 1] * (warm_up // 2) + [n_prompt]
    assert dry[: warm_up + 1] == [True, True] + [False] * (warm_up - 1)
    assert waits == [2, warm_up]  # after the dry passes, then by load_team_code (nothing left to wait for)
    assert posted_dry and not any(posted_dry)  # no job was posted during the dry passes


@pytest.mark.slow
def test_serve_compiles_in_a_second_process_on_a_fresh_install(tmp_path):
    """A fresh cache: start_compiling_serve starts a process whose compile lands in the cache,
    the job code of the weight types it is then told of (one C function for the set) too."""
    code = ("from edgellm.kernels import jobs, team; assert not team.in_disk_cache(team.serve); "
            "assert team.start_compiling_serve(); team.compile_weight_code([12, 8, 12]); "
            "assert not jobs.weight_code_in_disk_cache(); team.wait_for_serve(); "
            "assert jobs.weight_code_in_disk_cache(); "
            "assert team.in_disk_cache(team.serve); assert not team.start_compiling_serve(); "
            "assert jobs._weights_cfunc((8, 12)).cache_hits == 1")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, timeout=600)


def test_a_front_end_starts_the_compile_early_on_a_fresh_install_only(model_path, tmp_path, monkeypatch):
    """compile_ahead.start_early starts the compile process when the cache has no marker and the
    file is a GGUF one; the team takes that process over rather than starting its own; a run that
    has its kernels writes the marker, and then nothing starts early."""
    import subprocess

    from edgellm import compile_ahead
    from edgellm.kernels import team

    started = []

    def spawn():  # a stand-in for the compile: a process that ends at once
        started.append(subprocess.Popen([sys.executable, "-c", "pass"]))
        return started[-1]

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compile_ahead, "spawn", spawn)
    compile_ahead.start_early(tmp_path / "missing.gguf")
    assert started == []  # not a GGUF file: the load will say so, nothing starts
    compile_ahead.start_early(model_path)
    assert len(started) == 1
    compile_ahead.start_early(model_path)
    assert len(started) == 1  # once
    assert team.start_compiling_serve()  # taken over, not a second one
    assert len(started) == 1 and team._compiler == started
    team.wait_for_serve()
    assert compile_ahead.take_early() is None
    compile_ahead.mark_compiled()
    compile_ahead.start_early(model_path)
    assert len(started) == 1  # the marker: a warm install
