"""`edgellm chat`: the Textual app on a terminal, the plain REPL with --plain or when stdin or
stdout is not a terminal (a pipe, a log file, a dumb serial console)."""

from __future__ import annotations

import os
import sys

from edgellm.errors import EdgeLLMError
from edgellm.sampling import SamplingParams


def chat(args) -> int:
    params = SamplingParams(args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty, seed=args.seed)
    params.validate()
    if args.n_predict == 0 or args.n_predict < -1:
        raise EdgeLLMError(f"-n must be positive or -1, got {args.n_predict}")
    max_tokens = None if args.n_predict == -1 else args.n_predict
    if args.ctx != 0 and args.ctx < 8:
        raise EdgeLLMError(f"-c must be at least 8, got {args.ctx}")
    plain = args.plain or not (sys.stdin.isatty() and sys.stdout.isatty()) or os.environ.get("TERM") == "dumb"
    if plain:
        return _chat_plain(args, params, max_tokens)
    from edgellm.tui.app import ChatApp

    app = ChatApp(args.model, system=args.system, ctx=args.ctx, threads=args.threads, kv_type=args.kv_type,
                  params=params, max_tokens=max_tokens)
    app.run()
    return app.return_code or 0


def _chat_plain(args, params, max_tokens) -> int:
    import edgellm
    from edgellm.chat import ChatSession
    from edgellm.tui.plain import run_plain

    interactive = sys.stdin.isatty()
    if interactive:
        print("Loading the model…", file=sys.stderr, flush=True)
    llm = edgellm.load(args.model, threads=args.threads, ctx=args.ctx, kv_type=args.kv_type)
    session = ChatSession(llm, system=args.system, params=params, max_tokens=max_tokens)
    if interactive:
        print("Compiling the kernels (the first run only, may take a minute)…", file=sys.stderr, flush=True)
    session.warm_up()
    return run_plain(session, os.path.basename(llm.path), interactive)
