"""The flags of `edgellm convert SRC OUT`; edgellm/cli.py owns the command line and calls these."""

from __future__ import annotations

import argparse
import sys
import warnings

from edgellm.converters.convert import convert
from edgellm.converters.quantize import EMBEDDING_TYPES, OUTPUT_TYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="Hugging Face checkpoint folder, hub repo id (owner/name) or GGUF file")
    parser.add_argument("out", metavar="OUT", help="GGUF file to write (never the source)")
    parser.add_argument("--type", "-t", default="q8_0", choices=list(OUTPUT_TYPES),
                        help="tensor type of the output (default: q8_0); norms and biases stay f32")
    parser.add_argument("--keep-embeddings", choices=list(EMBEDDING_TYPES), default=None,
                        help="type of token_embd/output (default: --type, but q8_0 for the 4/5-bit types)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the tensors (names, shapes, types, sizes) and write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Convert as `args` says; raises ConvertError for bad input (the CLI prints it, exits 2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        out = convert(args.src, args.out, type=args.type, keep_embeddings=args.keep_embeddings,
                      dry_run=args.dry_run, progress=not args.no_progress)
    if not args.dry_run:
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)  # one line, without the source location
