"""The `specsteer` command line (also `python -m langchain_specsteer`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specsteer",
        description="SpecSteer: a private on-device specialist drafts, a large generalist verifies",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="generalist, specialist and specsteer side by side on the shipped demo pair",
        description=(
            "Decode a held-out user's request with the generalist, the specialist and SpecSteer "
            "on the shipped demo pair (no downloads), the user's past reviews as the private "
            "memory, and mark which spans of the SpecSteer text are accepted specialist drafts "
            "and which are recoveries."
        ),
    )
    demo.add_argument(
        "--pair", help="a folder from `python -m eval.train_pair --export` (default: shipped)"
    )
    demo.add_argument("--prompt", help="the public request (default: the demo user's)")
    demo.add_argument(
        "--context",
        help="private context (only the specialist sees it; default: from the user's memory)",
    )
    demo.add_argument(
        "--user",
        type=int,
        help="which held-out user of the pair, from 0 (default: the typical one, the median"
        " of the pair's users by SpecSteer's R-L margin over the specialist)",
    )
    demo.add_argument("--max-new-tokens", type=int, default=96, help="default: %(default)s")
    demo.add_argument(
        "--gamma", type=float, help="verification gate γ (default 0.5; inf accepts no draft)"
    )
    demo.add_argument("--alpha", type=float, help="steering strength α (default 1.0)")
    demo.add_argument(
        "--draft-tokens",
        help="K, drafts per round (default 6), or auto: the device chooses each round's length",
    )
    demo.add_argument(
        "--max-draft-tokens", type=int, help="with --draft-tokens auto: the longest (default 16)"
    )
    demo.add_argument(
        "--gate",
        choices=["fixed", "context"],
        help="fixed (default): γ at every draft position; context: γ·exp(−JSD(q_ctx, q_gen))",
    )
    demo.add_argument("--temperature", type=float, help="0 (default) decodes greedily")
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of sampling when --temperature > 0 (default: 0)",
    )
    demo.add_argument("--no-color", action="store_true", help="brackets instead of ANSI colours")
    demo.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    demo.add_argument(
        "--verbose", action="store_true", help="show transformers' model-loading progress bars"
    )
    demo.set_defaults(handler=_demo, command_parser=demo)
    _add_serve(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from langchain_specsteer.protocol import API_KEY_ENV, ServiceLimits

    defaults = ServiceLimits()
    serve = commands.add_parser(
        "serve",
        help="host the generalist (and a public specialist) as a verifier service",
        description=(
            "Serve the generalist over HTTP: the SpecSteer session protocol under "
            "/specsteer/v1 (docs/protocol.md) and vLLM's OpenAI-compatible scoring subset "
            "(/v1/completions, /v1/models, /tokenize, /health). OpenAPI at /docs (with the key "
            "unless --public-docs)."
        ),
    )
    serve.add_argument(
        "--generalist", required=True, help="hub id, folder or .gguf file of the generalist"
    )
    serve.add_argument(
        "--public-specialist",
        help="hub id, folder or .gguf file of a public copy of the specialist: q_gen is then "
        "computed here and the ratio test decided here",
    )
    for role in ("generalist", "public-specialist"):
        serve.add_argument(
            f"--{role}-gguf-file",
            metavar="FILE",
            help=f"a GGUF file in the --{role} folder or hub repo: weights, tokenizer and chat "
            "template, dequantised on load to --dtype (needs the [gguf] extra)",
        )
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset: no auth)",
    )
    serve.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when present)")
    serve.add_argument("--dtype", help="e.g. bfloat16 (default: float32 on CPU, auto on CUDA)")
    serve.add_argument(
        "--served-model-name",
        "--model-name",
        dest="model_name",
        metavar="NAME",
        help="the model's name in /v1/models, /specsteer/v1/info and completions (default: the "
        "--generalist folder's name, or its hub id)",
    )
    serve.add_argument(
        "--public-docs",
        action="store_true",
        help="serve /openapi.json, /docs and /redoc without the API key",
    )
    serve.add_argument(
        "--logprobs-mode",
        choices=["raw_logprobs", "processed_logprobs"],
        default="raw_logprobs",
        help="what /v1/completions reports for a generated token, as vLLM's flag: the model's "
        "log-probs, or those after temperature (default: %(default)s)",
    )
    capped = {"max_prompt_tokens", "max_session_tokens"}
    for field in dataclasses.fields(ServiceLimits):
        flag = "--" + field.name.replace("_", "-")
        serve.add_argument(
            flag,
            type=float if field.type == "float" else int,
            default=getattr(defaults, field.name),
            help="default: %(default)s"
            + (", lowered to the models' maximum length" if field.name in capped else ""),
        )
    serve.add_argument(
        "--log-prompts",
        action="store_true",
        help="include token ids in the logs (off: sizes and timings only)",
    )
    serve.add_argument("--log-level", default="info", help="default: %(default)s")
    serve.set_defaults(handler=_serve, command_parser=serve)


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import logging

    from langchain_specsteer.extras import optional_import
    from langchain_specsteer.models import LocalGeneralist, LocalSpecialist
    from langchain_specsteer.server import ServiceLimits, VerifierService, serve

    # Before any model loads: a missing server extra is named at once.
    optional_import("uvicorn", extra="server", purpose="specsteer serve")

    try:
        limits = ServiceLimits(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(ServiceLimits)}
        )
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s", stream=sys.stderr)
    options = {"device": args.device, "torch_dtype": args.dtype}
    try:
        generalist = LocalGeneralist.from_pretrained(
            args.generalist, gguf_file=args.generalist_gguf_file, **options
        )
        public = None
        if args.public_specialist:
            public = LocalSpecialist.from_pretrained(
                args.public_specialist, gguf_file=args.public_specialist_gguf_file, **options
            )
    except OSError as err:
        parser.error(f"cannot load a model: {err}")
    try:
        service = VerifierService(
            generalist,
            public,
            model_name=args.model_name,
            limits=limits,
            log_prompts=args.log_prompts,
        )
    except ValueError as err:  # e.g. a public specialist with another vocabulary
        parser.error(str(err))
    serve(
        service,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        public_docs=args.public_docs,
        logprobs_mode=args.logprobs_mode,
        log_level=args.log_level,
    )
    return 0


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pydantic import ValidationError

    from langchain_specsteer.demo import DEMO_PAIR, demo_users, pick_user, run_demo, use_color
    from langchain_specsteer.params import DecodingParams

    knobs = {
        "gamma": args.gamma,
        "alpha": args.alpha,
        "draft_tokens": args.draft_tokens,
        "max_draft_tokens": args.max_draft_tokens,
        "gate": args.gate,
        "temperature": args.temperature,
    }
    try:
        params = DecodingParams(
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            **{name: value for name, value in knobs.items() if value is not None},
        )
    except ValidationError as err:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())
        parser.error(problems)
    users = Path(args.pair or DEMO_PAIR) / "users.jsonl"
    if users.is_file() and args.user is not None:  # (no pair: the tiny one, no users)
        try:
            pick_user(demo_users(users.parent), args.user)
        except ValueError as err:
            parser.error(f"--{err}")
    try:
        run_demo(
            prompt=args.prompt,
            private_context=args.context,
            params=params,
            seed=args.seed,
            user=args.user,
            color=use_color(args.no_color, sys.stdout),
            pair_dir=args.pair,
            html_path=args.html,
            verbose=args.verbose,
        )
    except FileNotFoundError as err:
        parser.error(str(err))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args, args.command_parser)  # errors show the command's own usage
