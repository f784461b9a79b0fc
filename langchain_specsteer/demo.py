"""`specsteer demo`: three methods one after the other, SpecSteer's drafts and recoveries marked.

The demo runs on the shipped demo pair (`demo_pair()`: a small specialist and a larger
generalist trained on eval.world's synthetic reviews), so it needs no downloads; a held-out
user's past reviews are the private memory. Without the shipped pair, the tiny randomly
initialised pair of `langchain_specsteer.tiny` stands in, and its texts are noise. It shows
which spans of a SpecSteer text are the specialist's accepted drafts and which are the
recovered tokens, one per round, chosen from p_G + α (log q_ctx − log q_gen).
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TextIO

from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.params import DecodingParams
from langchain_specsteer.text import IncrementalDetokenizer

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_PROMPT",
    "DEMO_MAX_NEW_TOKENS",
    "DEMO_METHODS",
    "DEMO_SCORES",
    "TYPICAL_RULE",
    "DemoPair",
    "MethodRun",
    "Span",
    "demo_pair",
    "demo_scores",
    "demo_users",
    "quiet_loading",
    "render_html",
    "render_terminal",
    "rouge_l",
    "run_demo",
    "score_users",
    "trace",
    "typical_user",
    "write_scores",
]

TINY_LABEL = "tiny randomly initialised pair — texts are noise (the trained demo pair is missing)"
TRAINED_LABEL = (
    "the shipped demo pair, trained on a synthetic review world (eval.world); the user below "
    "was held out of training"
)
DEMO_PAIR = Path(__file__).parent / "demo_pair"
SPEED_NOTE = "speeds of the tiny random pair: they say nothing about real models"
DEFAULT_PROMPT = "Write a short review of the blender I bought last month."
DEFAULT_CONTEXT = (
    "Past reviews by this user:\n"
    "- Coffee grinder, 4/5: Loud, honestly. Still, the grind is even and fast.\n"
    "- Headphones, 3/5: Warm sound and deep bass, but the case feels cheap.\n"
    "- Tent, 5/5: Survived a storm at the lake without a leak. The kids love it."
)
DEMO_METHODS = ("generalist", "specialist", "specsteer")
"""The methods the demo runs (each described by its row of `methods.METHOD_SPECS`)."""
DEMO_MAX_NEW_TOKENS = 96
"""The demo's length (`specsteer demo --max-new-tokens`): its settings are the package's
decoding defaults with this many new tokens."""
DEMO_SCORES = "demo_scores.json"
"""The file of a pair folder that holds every held-out user's figures (`score_users`)."""
TYPICAL_RULE = (
    "the median of the pair's held-out users by SpecSteer's R-L margin over the specialist"
)
"""How the demo picks its default user (`typical_user`): a stated rule, not a pick by hand."""

Kind = Literal["text", "accepted", "recovered"]
ANSI = {"accepted": "\x1b[30;42m", "recovered": "\x1b[30;43m"}  # black on green / on yellow
ANSI_RESET = "\x1b[0m"
BRACKETS = {"accepted": ("«", "»"), "recovered": ("⟦", "⟧")}
LEGEND = {
    "accepted": "a specialist draft that passed verification (p_G/q_gen against γ)",
    "recovered": "a recovered token, picked from log p_G + α(log q_ctx − log q_gen)",
}


class DemoPair(NamedTuple):
    """The folders of a demo pair's two models, in `from_pretrained`'s order."""

    specialist: str
    generalist: str


def demo_pair(folder: str | os.PathLike[str] | None = None) -> DemoPair:
    """The shipped demo pair's model folders: `SpecSteerLLM.from_pretrained(*demo_pair())`.

    `folder` is another pair written by `python -m eval.train_pair --export`. The pair was
    trained with `retrievers.task_templates("product_review")`, so pass those templates too.
    """
    root = Path(folder) if folder is not None else DEMO_PAIR
    if not (root / "specialist").is_dir() or not (root / "generalist").is_dir():
        msg = (
            f"{root} holds no demo pair (expected specialist/, generalist/, users.jsonl); "
            "reinstall the package or export one with `python -m eval.train_pair --export`"
        )
        raise FileNotFoundError(msg)
    return DemoPair(str(root / "specialist"), str(root / "generalist"))


def demo_users(folder: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The pair's held-out users: `user`, `input` (a request), `output`, `profile` (reviews)."""
    root = Path(folder) if folder is not None else DEMO_PAIR
    lines = (root / "users.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def demo_scores(folder: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The figures `score_users` wrote into a pair folder (`DEMO_SCORES`), or None."""
    path = (Path(folder) if folder is not None else DEMO_PAIR) / DEMO_SCORES
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure ×100 as `eval.metrics` scores it (`rouge_score`'s defaults: lower-cased
    alphanumeric tokens, no stemming), without the eval extra: the longest common subsequence
    of the two token lists, F = 2PR/(P+R)."""
    ref = _ROUGE_TOKEN.findall(reference.lower())
    pred = _ROUGE_TOKEN.findall(prediction.lower())
    if not ref or not pred:
        return 0.0
    previous = [0] * (len(pred) + 1)
    for word in ref:
        row = [0]
        for j, other in enumerate(pred):
            row.append(previous[j] + 1 if word == other else max(previous[j + 1], row[j]))
        previous = row
    lcs = previous[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


def typical_user(margins: Sequence[float]) -> int:
    """The index of the typical user (`TYPICAL_RULE`), given each user's SpecSteer R-L minus the
    specialist's: users sorted by margin (equal margins in their order), the middle one; of an
    even count, the lower of the two middle ones."""
    if not margins:
        msg = "typical_user needs at least one user's margin"
        raise ValueError(msg)
    order = sorted(range(len(margins)), key=lambda i: (margins[i], i))
    return order[(len(margins) - 1) // 2]


def score_users(
    pair_dir: str | os.PathLike[str] | None = None,
    params: DecodingParams | None = None,
    *,
    verbose: bool = False,
) -> dict[str, Any]:
    """Every held-out user of a pair decoded as the demo decodes it (`DEMO_METHODS` at `params`,
    default: the demo's settings), each text's R-L against the user's real review and its speed,
    the means over users and the typical user (`typical_user`)."""
    import torch

    pair = Path(pair_dir) if pair_dir is not None else DEMO_PAIR
    params = params or DecodingParams(max_new_tokens=DEMO_MAX_NEW_TOKENS)
    llm = load_trained(pair, verbose=verbose)
    users = []
    for row in demo_users(pair):
        user_llm = llm.model_copy(update={"retriever": user_retriever(row)})
        context = user_llm.private_context_for(row["input"])[0]
        runs = [
            trace(user_llm, row["input"], context, params.model_copy(update={"method": method}))
            for method in DEMO_METHODS
        ]
        users.append(
            {
                "user": row["user"],
                "rouge_l": {run.method: round(rouge_l(run.text, row["output"]), 2) for run in runs},
                "tokens_per_second": {
                    run.method: round(run.stats["tokens_per_second"] or 0.0, 1) for run in runs
                },
            }
        )
    margins = [u["rouge_l"]["specsteer"] - u["rouge_l"]["specialist"] for u in users]
    mean = {
        key: {m: round(sum(u[key][m] for u in users) / len(users), 2) for m in DEMO_METHODS}
        for key in ("rouge_l", "tokens_per_second")
    }
    return {
        "rule": TYPICAL_RULE,
        "typical_user": typical_user(margins),
        "settings": params.model_dump(mode="json"),
        "threads": torch.get_num_threads(),
        "mean": mean,
        "users": users,
    }


def write_scores(folder: str | os.PathLike[str], scores: dict[str, Any], command: str) -> Path:
    """Store `score_users`' figures in the pair folder (`DEMO_SCORES`), with the command that
    produced them; the demo reads them at start-up instead of decoding every user."""
    path = Path(folder) / DEMO_SCORES
    record = {"command": command, **scores}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@contextmanager
def quiet_loading(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights") inside the block; restored after."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    if not quiet or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_was_off = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_was_off:
            disable_progress_bars()


@dataclass
class Span:
    """A stretch of output text and where it came from."""

    kind: Kind
    text: str


@dataclass
class MethodRun:
    """One method's output, split into spans by provenance, and its `generation_info` counters."""

    method: str
    spans: list[Span] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(span.text for span in self.spans)

    def add(self, kind: Kind, text: str) -> None:
        """Append text; it joins the last span if of the same kind (recoveries stay one each)."""
        if not text:
            return
        if self.spans and self.spans[-1].kind == kind != "recovered":
            self.spans[-1].text += text
        else:
            self.spans.append(Span(kind, text))


def trace(llm: Any, prompt: str, private_context: str | None, params: DecodingParams) -> MethodRun:
    """Decode one request with `llm` (its rounds, `SpecSteerLLM.rounds`), keeping each round's
    provenance.

    Tokens are detokenized one at a time; a piece of text belongs to the kind of the token
    that completed it (a multi-byte character can be split across tokens).
    """
    drafts = METHOD_SPECS[params.method].drafts
    run = llm.rounds(prompt, private_context=private_context, **params.model_dump())
    detokenizer = IncrementalDetokenizer(llm.specialist.tokenizer)
    result = MethodRun(params.method)
    kind: Kind = "text"
    for round_ in run:
        for i, token in enumerate(round_.tokens):
            if drafts:
                kind = "accepted" if i < round_.accepted else "recovered"
            result.add(kind, detokenizer.push([token]))
    result.add(kind, detokenizer.flush())
    result.stats = run.stats.as_dict()
    return result


def visible(text: str) -> str:
    """Text safe to show: control and format characters become visible symbols or escapes."""
    out = []
    for ch in text:
        code, category = ord(ch), unicodedata.category(ch)
        if ch in "\n\t":
            out.append(ch)
        elif code < 0x20:
            out.append(chr(0x2400 + code))  # ␀ ␁ … ␟ (control pictures)
        elif code == 0x7F:
            out.append("␡")
        elif category in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _fmt(value: float | None, spec: str, none: str = "—") -> str:
    return none if value is None else format(value, spec)


def stats_line(stats: dict[str, Any]) -> str:
    parts = [
        f"{stats['new_tokens']} tokens",
        f"{_fmt(stats['tokens_per_second'], '.0f')} tokens/s",
        f"acceptance {_fmt(stats['acceptance_rate'], '.0%')}",
        f"generalist calls {stats['generalist_calls']}",
    ]
    if stats["drafted"]:
        parts.append(
            f"rounds {stats['rounds']}, drafted {stats['drafted']}, accepted {stats['accepted']}"
        )
    return " · ".join(parts)


def _paint(span: Span, color: bool) -> str:
    text = visible(span.text)
    if span.kind == "text":
        return text
    if color:  # reset before each newline so the background does not run to the line's end
        on = ANSI[span.kind]
        return "\n".join(f"{on}{line}{ANSI_RESET}" if line else "" for line in text.split("\n"))
    left, right = BRACKETS[span.kind]
    return f"{left}{text}{right}"


def _legend(color: bool) -> list[str]:
    lines = []
    for kind, meaning in LEGEND.items():
        sample = _paint(Span(kind, kind), color)
        lines.append(f"  {sample}  {meaning}")
    return lines


def render_terminal(
    runs: Sequence[MethodRun],
    *,
    prompt: str,
    private_context: str,
    params: DecodingParams,
    pair: str,
    color: bool,
    label: str = TINY_LABEL,
    note: str = SPEED_NOTE,
    reference: str | None = None,
    scores: dict[str, Any] | None = None,
) -> str:
    """The demo's report as terminal text (ANSI colours when `color`, else brackets)."""
    lines = [
        f"SpecSteer demo — {label}.",
        f"pair: {pair}",
        "",
        "request (public: both models see it):",
        *(f"  {line}" for line in visible(prompt).splitlines()),
        "private context (device only: only the specialist sees it):",
        *(f"  {line}" for line in visible(private_context).splitlines()),
        "",
        f"settings: {settings_line(params)}",
    ]
    for run in runs:
        lines += ["", f"── {run.method}: {METHOD_SPECS[run.method].description}"]
        if any(span.kind != "text" for span in run.spans):
            lines += ["legend:", *_legend(color)]
        lines += [
            "".join(_paint(span, color) for span in run.spans),
            f"  ({stats_line(run.stats)})",
        ]
    lines += ["", *summary_table(runs, note, reference, scores)]
    return "\n".join(lines)


def settings_line(params: DecodingParams) -> str:
    decoding = (
        "greedy" if params.greedy else f"temperature={params.temperature}, seed={params.seed}"
    )
    drafts = f"draft_tokens={params.draft_tokens}"
    if params.draft_tokens == "auto":
        drafts += f" (at most {params.max_draft_tokens}, stop below {params.draft_stop})"
    if params.gate != "fixed":
        drafts += f" gate={params.gate}"
    return (
        f"gamma={params.gamma} alpha={params.alpha} {drafts} "
        f"max_new_tokens={params.max_new_tokens} {decoding}"
    )


SUMMARY_HEADER = ("method", "tokens", "tokens/s", "acceptance", "generalist calls")


def summary(
    runs: Sequence[MethodRun],
    reference: str | None = None,
    scores: dict[str, Any] | None = None,
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The closing table's header and rows: each run's speed and counts; with the user's real
    `reference`, each text's R-L against it (`rouge_l`); with the pair's `scores`
    (`demo_scores`), each method's mean R-L and tokens/s over all the pair's users."""
    header = SUMMARY_HEADER
    if reference is not None:
        header += ("R-L",)
    if scores is not None:
        n = len(scores["users"])
        header += (f"R-L, {n} users", f"tokens/s, {n} users")
    rows = []
    for run in runs:
        row: tuple[str, ...] = (
            run.method,
            str(run.stats["new_tokens"]),
            _fmt(run.stats["tokens_per_second"], ".0f"),
            _fmt(run.stats["acceptance_rate"], ".0%"),
            str(run.stats["generalist_calls"]),
        )
        if reference is not None:
            row += (f"{rouge_l(run.text, reference):.1f}",)
        if scores is not None:
            mean = scores["mean"]
            row += (
                _fmt(mean["rouge_l"].get(run.method), ".1f"),
                _fmt(mean["tokens_per_second"].get(run.method), ".0f"),
            )
        rows.append(row)
    return header, rows


def summary_table(
    runs: Sequence[MethodRun],
    note: str = SPEED_NOTE,
    reference: str | None = None,
    scores: dict[str, Any] | None = None,
) -> list[str]:
    header, body = summary(runs, reference, scores)
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *map(str.rjust, row[1:], widths[1:])]) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [*lines, *summary_notes(note, reference, scores)]


def summary_notes(
    note: str, reference: str | None = None, scores: dict[str, Any] | None = None
) -> list[str]:
    """The lines under the closing table: the speed note, then what R-L and the means are."""
    notes = [f"({note})"]
    if reference is not None:
        notes.append("(R-L: ROUGE-L F1 ×100 against the user's real review, held out)")
    if scores is not None:
        notes.append(f"(means over the pair's users: {scores['command']})")
    return notes


def render_html(
    runs: Sequence[MethodRun],
    *,
    prompt: str,
    private_context: str,
    params: DecodingParams,
    pair: str,
    label: str = TINY_LABEL,
    note: str = SPEED_NOTE,
    reference: str | None = None,
    scores: dict[str, Any] | None = None,
) -> str:
    """The same report as a small self-contained HTML page."""

    def esc(text: str) -> str:
        return html.escape(visible(text), quote=True)

    css_class = {"accepted": "acc", "recovered": "rec"}
    legend = " ".join(
        f'<span class="{css_class[kind]}">{kind}</span> {esc(meaning)}.'
        for kind, meaning in LEGEND.items()
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>SpecSteer demo</title>',
        "<style>",
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
        "line-height:1.5;color:#222}",
        "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f5f5f5;padding:.6rem;"
        "border-radius:4px;font-family:ui-monospace,Menlo,monospace}",
        ".acc{background:#b9ecb9}.rec{background:#ffd966}",
        ".note{color:#444;background:#eef3f8;border-left:4px solid #9bb5cc;padding:.4rem .8rem}",
        ".stats{color:#555;font-size:.9em}",
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2rem .6rem}",
        "td{text-align:right}td:first-child{text-align:left}",
        "</style></head><body>",
        "<h1>SpecSteer demo</h1>",
        f'<p class="note">{esc(label)}.</p>',
        f"<p>pair: {esc(pair)}<br>settings: {esc(settings_line(params))}</p>",
        "<h2>Request (public: both models see it)</h2>",
        f"<pre>{esc(prompt)}</pre>",
        "<h2>Private context (device only: only the specialist sees it)</h2>",
        f"<pre>{esc(private_context)}</pre>",
    ]
    for run in runs:
        body = "".join(
            esc(span.text)
            if span.kind == "text"
            else f'<span class="{css_class[span.kind]}" title="{span.kind}">{esc(span.text)}</span>'
            for span in run.spans
        )
        parts += [
            f"<h2>{esc(run.method)}</h2>",
            f"<p>{esc(METHOD_SPECS[run.method].description)}</p>",
        ]
        if any(span.kind != "text" for span in run.spans):
            parts.append(f"<p>Legend: {legend}</p>")
        parts += [f"<pre>{body}</pre>", f'<p class="stats">{esc(stats_line(run.stats))}</p>']
    header, rows = summary(runs, reference, scores)
    parts += [
        "<h2>Summary</h2>",
        "<table>",
        "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr>",
        *("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows),
    ]
    notes = summary_notes(note, reference, scores)
    parts += ["</table>", *(f'<p class="stats">{esc(n)}</p>' for n in notes)]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def _describe_pair(llm: Any) -> str:
    def one(lm: Any) -> str:
        c = lm.model.config
        return f"{type(lm.model).__name__} ({c.hidden_size} hidden, {c.num_hidden_layers} layers)"

    vocab = len(llm.specialist.tokenizer)
    return (
        f"specialist {one(llm.specialist)}, generalist {one(llm.generalist)}, "
        f"one byte-level BPE tokenizer ({vocab} tokens)"
    )


def use_color(no_color: bool, stream: TextIO) -> bool:
    """ANSI colours only on a terminal, and not when asked otherwise (--no-color, NO_COLOR)."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass
class DemoSetup:
    """What the demo decodes with: the LLM, the request, and how to label the report."""

    llm: Any
    prompt: str
    label: str
    note: str
    reference: str | None = None


def pick_user(users: Sequence[dict[str, Any]], user: int) -> dict[str, Any]:
    """The held-out user at index `user`; out of range is an error, not a wrap-around."""
    if not 0 <= user < len(users):
        known = f"pick one from 0 to {len(users) - 1}" if users else "it has none"
        msg = f"user={user} is out of range of the demo pair's held-out users: {known}"
        raise ValueError(msg)
    return users[user]


def load_trained(pair_dir: Path, *, verbose: bool = False) -> Any:
    """A pair folder's `SpecSteerLLM` on CPU, with the templates the pair was trained with and
    no retriever (`user_retriever` gives each user's)."""
    from langchain_specsteer.llms import SpecSteerLLM
    from retrievers import task_templates

    with quiet_loading(not verbose):
        return SpecSteerLLM.from_pretrained(
            *demo_pair(pair_dir), device="cpu", **task_templates("product_review")
        )


def user_retriever(row: dict[str, Any]) -> Any:
    """A held-out user's past reviews as their private memory, searched by BM25 (k=3)."""
    from retrievers import PersonalBM25Retriever, PrivateMemory

    memory = PrivateMemory(":memory:")
    memory.add(
        [entry["reviewText"] for entry in row["profile"]],
        [{k: v for k, v in entry.items() if k != "reviewText"} for entry in row["profile"]],
    )
    return PersonalBM25Retriever.from_memory(memory, k=3)


def trained_setup(
    pair_dir: Path, user: int, prompt: str | None, *, verbose: bool = False
) -> DemoSetup:
    """The shipped pair, with a held-out user's reviews as the private memory (BM25, k=3)."""
    row = pick_user(demo_users(pair_dir), user)
    llm = load_trained(pair_dir, verbose=verbose)
    llm = llm.model_copy(update={"retriever": user_retriever(row)})
    note = "speeds of the small demo pair on this machine; see docs/results.md for benchmarks"
    reference = row["output"] if prompt is None else None
    return DemoSetup(
        llm, prompt or row["input"], f"{TRAINED_LABEL} ({row['user']})", note, reference
    )


def tiny_setup(seed: int, prompt: str | None) -> DemoSetup:
    """The tiny random pair: every code path, meaningless texts."""
    from langchain_specsteer.llms import SpecSteerLLM
    from langchain_specsteer.tiny import tiny_pair

    specialist, generalist = tiny_pair(seed)
    llm = SpecSteerLLM(specialist=specialist, generalist=generalist)
    return DemoSetup(llm, prompt or DEFAULT_PROMPT, TINY_LABEL, SPEED_NOTE)


def run_demo(
    *,
    prompt: str | None = None,
    private_context: str | None = None,
    params: DecodingParams | None = None,
    seed: int = 0,
    user: int | None = None,
    pair_dir: str | os.PathLike[str] | None = None,
    color: bool = False,
    html_path: str | os.PathLike[str] | None = None,
    stream: TextIO | None = None,
    verbose: bool = False,
) -> list[MethodRun]:
    """Decode one request with each demo method on the shipped pair and print the report.

    `pair_dir` (default: the shipped pair) is a folder written by `eval.train_pair --export`;
    if the shipped pair is missing, a tiny random pair stands in, labelled as such. An
    explicit `private_context` replaces the one retrieved from the user's memory. `user`
    picks a held-out user (out of range: ValueError; None: the typical one, `TYPICAL_RULE`,
    from the pair's `DEMO_SCORES`, else the first); `verbose` shows the loading bars.
    """
    stream = stream or sys.stdout
    params = params or DecodingParams(max_new_tokens=DEMO_MAX_NEW_TOKENS)
    if pair_dir is not None and not (Path(pair_dir) / "specialist").is_dir():
        msg = f"{pair_dir} holds no demo pair (expected specialist/, generalist/, users.jsonl)"
        raise FileNotFoundError(msg)
    pair = Path(pair_dir) if pair_dir is not None else DEMO_PAIR
    scores = None
    if (pair / "specialist").is_dir():
        scores = demo_scores(pair)
        if user is None:
            user = scores["typical_user"] if scores else 0
        setup = trained_setup(pair, user, prompt, verbose=verbose)
    else:
        setup = tiny_setup(seed, prompt)
        private_context = private_context or DEFAULT_CONTEXT
    llm = setup.llm
    context = private_context or llm.private_context_for(setup.prompt)[0]
    runs = [
        trace(llm, setup.prompt, context, params.model_copy(update={"method": method}))
        for method in DEMO_METHODS
    ]
    report = dict(
        prompt=setup.prompt,
        private_context=context,
        params=params,
        pair=_describe_pair(llm),
        label=setup.label,
        note=setup.note,
        reference=setup.reference,
        scores=scores,
    )
    print(render_terminal(runs, color=color, **report), file=stream)
    if setup.reference:
        print(f"\nthe user's real review (held out): {visible(setup.reference)}", file=stream)
    if html_path is not None:
        path = Path(html_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(runs, **report), encoding="utf-8")
        print(f"\nwrote {path}", file=stream)
    return runs
