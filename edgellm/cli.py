"""The `edgellm` command: one subcommand per verb; each parses its flags and calls the API.

Bad input (a missing or corrupt file, a bad flag value) prints one line, `edgellm: error: ...`,
and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from edgellm import compile_ahead
from edgellm.errors import EdgeLLMError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_model_args(p: argparse.ArgumentParser, optional_model: bool = True) -> None:
    if optional_model:
        p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the bundled Gemma-3-270M)")
    else:
        p.add_argument("model", help="GGUF file")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-c", "--ctx", type=int, default=4096, help="context length in tokens (0: the model's)")


def _add_kv_type_arg(p) -> None:
    p.add_argument("--kv-type", default="f16", choices=["f16", "f32", "q8_0"],
                   help="KV cache storage (default f16, as llama.cpp's)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 = off (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off (default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="drop tokens below min-p x the best; 0 = off (default 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="penalize the last 64 tokens; 1 = off (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgellm", description="CPU-first local LLM runtime for GGUF models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="generate text from a prompt")
    _add_model_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    _add_sampling_args(p)
    _add_kv_type_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="chat with a model (Textual; --plain or a pipe: a line REPL)")
    _add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("-n", "--n-predict", type=int, default=-1, help="tokens per answer at most (default -1: no limit)")
    _add_sampling_args(p)
    _add_kv_type_arg(p)
    p.add_argument("--plain", action="store_true", help="a line REPL instead of the full-screen chat")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="prefill/decode speed, TTFT, TPOT, memory, GB/s (optionally vs llama.cpp)")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the bundled Gemma-3-270M)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-r", "--reps", type=int, default=3, help="repetitions per engine (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_kv_type_arg(p)
    p.add_argument("--vs-llama-cpp", action="store_true",
                   help="run llama.cpp (llama-cpp-python, the bench extra) on the same file, alternating")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tokenize", help="print the token ids of a text as a JSON list")
    p.add_argument("model", help="GGUF file")
    p.add_argument("text")
    p.add_argument("--special", action="store_true", help="parse control tokens such as <start_of_turn>")
    p.add_argument("--no-bos", action="store_true", help="do not add BOS")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("perplexity", help="perplexity of a text file (llama.cpp's protocol)")
    p.add_argument("model", help="GGUF file")
    p.add_argument("-f", "--file", required=True, help="text file")
    p.add_argument("-c", "--ctx", type=int, default=512, help="chunk length in tokens (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("convert", help="Hugging Face checkpoint or GGUF file -> GGUF (f32 ... q4_0)")
    from edgellm.converters.cli import add_arguments as add_convert_arguments

    add_convert_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="architecture, sizes, tensor types, context length of a GGUF file")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the bundled model)")
    p.add_argument("--sparsity", action="store_true",
                   help="check that every group of the pruned tensors keeps the N:M pattern")
    p.set_defaults(func=cmd_info)
    return parser


def announce_compiling() -> None:
    """One line on stderr when this run will compile the kernels (seconds of silence otherwise):
    edgellm.load's on_compile, called once the model file has loaded, so that a bad flag or a bad
    file stays a one-line error."""
    print("edgellm: compiling kernels (first run only)...", file=sys.stderr, flush=True)


def _positive(value: int | None, name: str) -> None:
    if value is not None and value <= 0:
        raise EdgeLLMError(f"{name} must be positive, got {value}")


def cmd_run(args) -> int:
    import edgellm

    _positive(args.threads, "--threads")
    if args.n_predict < 0:
        raise EdgeLLMError(f"-n must be >= 0, got {args.n_predict}")
    from edgellm.sampling import SamplingParams

    # checked before the load, whose fresh-install notice would come before the error otherwise
    SamplingParams(args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty, seed=args.seed).validate()
    compile_ahead.start_early(args.model)
    llm = edgellm.load(args.model, threads=args.threads, ctx=args.ctx, kv_type=args.kv_type,
                       on_compile=announce_compiling)
    pieces = llm.generate(
        args.prompt, max_tokens=args.n_predict, temperature=args.temp, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
    )
    try:
        for piece in pieces:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        pieces.close()  # keep what was generated; report it below
    stats = llm.last_stats
    if args.json:
        print(json.dumps(stats.as_dict(), ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        print(f"[ prompt: {stats.prefill_tok_s:.1f} tok/s | generation: {stats.decode_tok_s:.1f} tok/s ]",
              file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from edgellm.tui.launch import chat

    _positive(args.threads, "--threads")
    return chat(args)


def cmd_bench(args) -> int:
    from edgellm.bench import bench, format_table

    _positive(args.threads, "--threads")
    result = bench(args.model, args.n_prompt, args.n_gen, args.threads, args.reps, args.vs_llama_cpp,
                   progress=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True), kv_type=args.kv_type)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_tokenize(args) -> int:
    from edgellm.gguf_file import GGUFFile
    from edgellm.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_metadata(GGUFFile(args.model).metadata)
    print(json.dumps(tokenizer.encode(args.text, bos=not args.no_bos, special=args.special)))
    return 0


def cmd_perplexity(args) -> int:
    from edgellm.perplexity import perplexity

    _positive(args.threads, "--threads")
    if args.ctx < 4:
        raise EdgeLLMError(f"-c must be at least 4, got {args.ctx}")
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeLLMError(f"cannot read {args.file}: {e.strerror if isinstance(e, OSError) else e}") from None
    import edgellm

    compile_ahead.start_early(args.model)
    llm = edgellm.load(args.model, threads=args.threads, ctx=args.ctx, on_compile=announce_compiling)
    result = perplexity(llm, text, args.ctx, progress=lambda i, n, ppl: print(
        f"[{i}]{ppl:.4f}", end="," if i < n else "\n", file=sys.stderr, flush=True))
    print(f"PPL = {result.ppl:.4f} ± {result.error:.4f}  ({result.n_chunks} chunks of {args.ctx}, "
          f"{result.n_scored} tokens scored)")
    return 0


def cmd_convert(args) -> int:
    from edgellm.converters.cli import run

    return run(args)


def cmd_info(args) -> int:
    from edgellm.info import describe
    from edgellm.default_model import default_model_path

    print(describe(args.model or default_model_path(), sparsity=args.sparsity))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edgellm.system import one_malloc_arena

    one_malloc_arena()  # before the kernels' threads start
    try:
        return args.func(args)
    except EdgeLLMError as e:
        from edgellm.gguf_file import GGUFError

        model = getattr(args, "model", None)
        where = f"{model}: " if model and isinstance(e, GGUFError) else ""  # name the bad file
        print(f"edgellm: error: {where}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgellm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
