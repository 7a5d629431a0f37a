"""`edgellm info`: what is in a GGUF file, without running it."""

from __future__ import annotations

import os
from collections import Counter

from edgellm import sparse
from edgellm.gguf_file import GGUFFile


def _human(n: float, unit: str = "B") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return str(n)


def describe(path: str | os.PathLike, sparsity: bool = False) -> str:
    """The summary; sparsity=True adds `edgellm info --sparsity`: every N:M group of the pruned
    tensors checked (edgellm/sparse.py), a SparsityError if one breaks the pattern."""
    g = GGUFFile(path)
    arch = g.architecture
    md = g.metadata
    n_params = sum(_n_elements(t.shape) for t in g.tensors.values())
    by_type = Counter()
    bytes_by_type = Counter()
    for t in g.tensors.values():
        by_type[t.type_name] += 1
        bytes_by_type[t.type_name] += t.data.nbytes
    lines = [
        f"file:          {os.fspath(path)}",
        f"format:        GGUF v{g.version}, {len(g.tensors)} tensors, {len(md)} metadata keys",
        f"name:          {md.get('general.name', '?')}",
        f"architecture:  {arch}",
        f"parameters:    {_human(n_params, '')} ({n_params:,})",
        f"file size:     {_human(g.file_size)} ({8 * g.file_size / max(n_params, 1):.2f} bits/weight)",
        f"context:       {md.get(arch + '.context_length', '?')} (trained)",
        f"layers:        {md.get(arch + '.block_count', '?')}, width {md.get(arch + '.embedding_length', '?')}, "
        f"ffn {md.get(arch + '.feed_forward_length', '?')}",
        f"heads:         {md.get(arch + '.attention.head_count', '?')} query, "
        f"{md.get(arch + '.attention.head_count_kv', md.get(arch + '.attention.head_count', '?'))} kv",
    ]
    if arch + ".attention.sliding_window" in md:
        lines.append(f"sliding window: {md[arch + '.attention.sliding_window']}")
    tokens = md.get("tokenizer.ggml.tokens")
    lines.append(f"tokenizer:     {md.get('tokenizer.ggml.model', 'none')} "
                 f"(pre: {md.get('tokenizer.ggml.pre', '-')}), {len(tokens) if tokens is not None else 0} tokens")
    lines.append("tensor types:  " + ", ".join(
        f"{name} x{count} ({_human(bytes_by_type[name])})" for name, count in by_type.most_common()))
    if sparsity:
        lines += sparse.check(g)
    elif sparse.read_metadata(g) is not None:
        lines.append(sparse.check(g)[0] + " (--sparsity checks every group)")
    return "\n".join(lines)


def _n_elements(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
