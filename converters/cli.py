"""The flags of `edgellm convert SRC OUT`; edgellm/cli.py owns the command line and calls these.
The flags come from options.py alone: the converter loads when the command runs."""

from __future__ import annotations

import argparse
import sys
import warnings

from edgellm.converters import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="Hugging Face checkpoint folder, hub repo id (owner/name) or GGUF file")
    parser.add_argument("out", metavar="OUT", help="GGUF file to write (never the source)")
    parser.add_argument("--type", "-t", default="q8_0", choices=options.OUTPUT_TYPES,
                        help="tensor type of the output (default: q8_0); norms and biases stay f32")
    parser.add_argument("--keep-embeddings", choices=options.EMBEDDING_TYPES, default=None,
                        help="type of token_embd/output (default: --type, but q8_0 for the 4/5-bit types)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the tensors (names, shapes, types, sizes) and write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    sparse = parser.add_argument_group("2:4 sparsity (docs/sparse-format.md)")
    sparse.add_argument("--sparsity", metavar="N:M", default=None,
                        help="prune the block weights: keep N of every M consecutive inputs (2:4)")
    sparse.add_argument("--method", choices=options.METHODS, default=options.METHODS[0],
                        help=f"which weights to keep (default: {options.METHODS[0]}; it and wanda need --calib)")
    sparse.add_argument("--calib", metavar="FILE", default=None,
                        help="calibration text for wanda/sparsegpt (not the text you evaluate on)")
    sparse.add_argument("--calib-tokens", metavar="N", type=int, default=options.DEFAULT_CALIB_TOKENS,
                        help=f"tokens of --calib to run (default {options.DEFAULT_CALIB_TOKENS})")
    sparse.add_argument("--dense", metavar="LAYERS|TENSORS", default=None,
                        help="keep these dense: layers (0,17 or 0-2) and/or name pieces (attn, ffn_down)")
    sparse.add_argument("--sparse-layout", choices=options.SPARSE_LAYOUTS, default="compact",
                        help="compact: kept values + 2-bit positions (edgellm only); dense: standard "
                             "q4_0/q8_0 with the zeros in place (llama.cpp loads it) (default: compact)")


def run(args: argparse.Namespace) -> int:
    """Convert as `args` says; raises ConvertError for bad input (the CLI prints it, exits 2)."""
    from edgellm.converters.pipeline import convert

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        out = convert(args.src, args.out, type=args.type, keep_embeddings=args.keep_embeddings,
                      dry_run=args.dry_run, progress=not args.no_progress, sparsity=args.sparsity,
                      method=args.method, sparse_layout=args.sparse_layout, dense=args.dense,
                      calib=args.calib, calib_tokens=args.calib_tokens)
    if not args.dry_run:
        sparse = f", {args.sparsity} {args.method} {args.sparse_layout}" if args.sparsity else ""
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.type}{sparse})")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)  # one line, without the source location
