"""Train the demo pair on the synthetic world: a tokenizer, a specialist and a generalist.

    python -m eval.world --out data/world
    python -m eval.train_pair --data data/world --out build/demo_pair \
        --export langchain_specsteer/demo_pair

The shipped pair's commands (a longer specialist, a 24-layer generalist grown from 4 layers)
are in docs/results.md, "The shipped pair".

The specialist learns to write a user's review from the request *with* their retrieved past
reviews in its prompt (and, half the time, without them, since SpecSteer also needs q_gen,
the same specialist on the public prompt alone); the generalist learns from the request
alone. Prompts are built exactly as `SpecSteerLLM` builds them at inference (task templates,
BM25 top-k, the tokenizer's chat template), and only the review tokens carry loss.

Training is seeded and resumable: a checkpoint is written every two minutes, and running the
same command again continues from it. `--minutes` caps each model's time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from eval.cli import command_parser
from eval.data import Example, load_longlamp
from eval.prompts import rendered_prompts, retrieve_profile
from eval.world import assistant_messages, assistant_tools
from langchain_specsteer.models import encode_prompt
from langchain_specsteer.tools import PRIVATE_RESULT
from retrievers import task_templates
from retrievers.tools import recall_text

__all__ = [
    "ModelSize",
    "TrainConfig",
    "build_episode_sequences",
    "build_sequences",
    "load_episodes",
    "recall_result",
    "train_model",
    "train_tokenizer",
]

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|review|>", "<|tools|>", "<|result|>"]
CALL_TOKEN = "<|call|>"  # special: LLM text skips it; ChatSpecSteer keeps it to parse calls
CHECKPOINT_SECONDS = 120.0
# GPT-2's split, except that a model code ("X200", after its space) stays one piece, so BPE
# makes it one token, and every other digit is a piece of its own: a number is then the same
# tokens wherever it stands (" 37", "(37)", ": 37}"), and copying it from the request is one
# step per token instead of a mapping between "37" and " 37".
PRE_TOKENIZER = r" ?[A-Z][0-9]+(?![0-9])| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# One user turn renders as before ("<|bos|>request<|review|>": the template's newlines after
# block tags are trimmed); tools are listed by name and argument names on their own line, an
# assistant turn is "<|review|>" text and/or "<|call|>name {json}" calls then EOS, a tool result
# "<|result|>" text (the `specsteer` family of langchain_specsteer.tools).
CHAT_TEMPLATE = (
    "<|bos|>{% if tools %}<|tools|>{% for tool in tools %}"
    "{% set f = tool.function if tool.function is defined else tool %}"
    "{{ f.name }}({{ (f.parameters.properties if f.parameters is defined"
    " and f.parameters.properties is defined else {}) | list | join(', ') }})"
    "{% if not loop.last %} {% endif %}{% endfor %}{{ '\\n' }}{% endif %}"
    "{% for message in messages %}{% if message.role == 'assistant' %}\n<|review|>"
    "{{ message.content or '' }}{% for call in message.tool_calls or [] %}"
    "{% set c = call.function if call.function is defined else call %}"
    "<|call|>{{ c.name }} {% if c.arguments is string %}{{ c.arguments }}"
    "{% else %}{{ c.arguments | tojson }}{% endif %}{% endfor %}<|eos|>"
    "{% elif message.role == 'tool' %}\n<|result|>{{ message.content }}"
    "{% else %}{{ message.content }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}\n<|review|>{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    """A Qwen3 configuration: hidden size, layers and attention heads."""

    hidden: int
    layers: int
    heads: int


@dataclass
class TrainConfig:
    """Everything that determines the trained pair."""

    seed: int = 0
    vocab_size: int = 2048
    specialist: ModelSize = ModelSize(128, 2, 4)
    generalist: ModelSize = ModelSize(256, 16, 4)
    k: int = 3  # retrieved profile entries in the specialist's prompt
    no_context_share: float = 0.5  # specialist examples trained without the context (q_gen)
    batch_tokens: int = 4096
    lr: float = 3e-3
    warmup_steps: int = 30
    specialist_steps: int = 900  # ~0.5 s a step on 2 cores
    generalist_steps: int = 400  # ~3.4 s a step on 2 cores
    minutes: float = 35.0  # cap per model
    grow_from: int | None = None  # train a generalist this deep first, then grow it (`grow`)
    seed_steps: int = 0  # steps of that shallower generalist
    grow_lr: float | None = None  # peak learning rate after growing (None: lr)
    init: str | None = None  # fine-tune this pair's folders instead of starting from scratch
    review_examples: int | None = None  # train on the first N review examples (None: all)
    episodes: int | None = None  # train on the first N assistant episodes (None: all)


def extend_tokenizer(tokenizer: Any) -> Any:
    """An older pair's tokenizer with the tool-calling tokens and chat template added (the
    review prompts render exactly as before)."""
    new = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new})
    if CALL_TOKEN not in tokenizer.all_special_tokens:  # new, or an older pair's plain token
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [CALL_TOKEN]}, replace_extra_special_tokens=False
        )  # an existing token keeps its id
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with BOS/EOS and the chat template, split for copying
    (`PRE_TOKENIZER`): a model code is one token, any other number one token per digit."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENIZER), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [CALL_TOKEN]})  # after the BPE
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_sequences(
    examples: list[Example],
    tokenizer: Any,
    *,
    context: bool,
    k: int,
    rng: random.Random,
    share: float = 0.0,
) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per example: prompt as at inference, then review and EOS.

    Args:
        context: put the top-k retrieved profile entries in the prompt (the specialist).
        share: fraction of examples that get the public prompt instead (q_gen), with context.
    """
    sequences = []
    for example in examples:
        with_context = context and rng.random() >= share
        documents = retrieve_profile(example, "product_review", "bm25", k) if with_context else []
        private, public = rendered_prompts(example, "product_review", documents)
        prompt = encode_prompt(tokenizer, private if with_context else public)
        review = tokenizer.encode(example.output, add_special_tokens=False)
        sequences.append(([*prompt, *review, tokenizer.eos_token_id], len(prompt)))
    return sequences


def load_episodes(data: Path, split: str = "train", limit: int | None = None) -> list[dict]:
    """The world's assistant episodes (`assistant/{split}.jsonl`; none for an older world)."""
    path = Path(data) / "assistant" / f"{split}.jsonl"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as file:
        episodes = [json.loads(line) for line in file]
    return episodes[:limit]


def recall_result(episode: dict, k: int) -> str:
    """What `recall_memory` returns for a recall episode: the BM25 top-k of the user's past
    reviews for the query, rendered as `memory_tools` renders them for product reviews."""
    example = Example(episode["user"], episode["query"], "", episode["profile"], episode["user"])
    documents = retrieve_profile(example, "product_review", "bm25", k)
    return recall_text(documents, task_templates("product_review")["document_template"])


def build_episode_sequences(
    episodes: list[dict],
    tokenizer: Any,
    *,
    private: bool,
    k: int,
    rng: random.Random,
    share: float = 0.0,
) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per assistant turn of each episode, rendered with its tools
    through the chat template; only the turn (and its EOS) carries loss.

    Args:
        private: the recall result is the retrieval (the specialist), else the placeholder
            the generalist reads in its place.
        share: fraction of recall episodes that get the placeholder anyway (q_gen), privately.
    """
    sequences = []
    for episode in episodes:
        result = None
        if episode["kind"] == "recall":
            reads = private and rng.random() >= share
            result = recall_result(episode, k) if reads else PRIVATE_RESULT
        messages = assistant_messages(episode, result)
        tools = assistant_tools(episode)
        for turn in (1, 3):
            prompt = tokenizer.apply_chat_template(
                messages[:turn], tools=tools, tokenize=False, add_generation_prompt=True
            )
            whole = tokenizer.apply_chat_template(messages[: turn + 1], tools=tools, tokenize=False)
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            ids = tokenizer.encode(whole, add_special_tokens=False)
            if ids[: len(prompt_ids)] != prompt_ids or ids[-1] != tokenizer.eos_token_id:
                msg = f"the chat template does not extend turn by turn: {whole!r}"
                raise ValueError(msg)
            sequences.append((ids, len(prompt_ids)))
    return sequences


def _model(size: ModelSize, tokenizer: Any, seed: int) -> Any:
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 3,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        head_dim=size.hidden // size.heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config)


def grow(model: Any, layers: int) -> Any:
    """`model` deepened to `layers` by block expansion (LLaMA Pro): each layer is followed by
    copies of itself whose output projections (attention and MLP) are zero, so the deeper model
    computes exactly what `model` did, and training goes on from there."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    depth = config.num_hidden_layers
    if layers % depth:
        msg = f"a {depth}-layer model grows to a multiple of {depth} layers, not {layers}"
        raise ValueError(msg)
    repeats = layers // depth
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i // repeats] for i in range(layers)]
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith("model.layers."):
            state[key] = value
            continue
        index, rest = key.removeprefix("model.layers.").split(".", 1)
        for copy_ in range(repeats):
            zero = copy_ > 0 and rest in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
            state[f"model.layers.{int(index) * repeats + copy_}.{rest}"] = (
                torch.zeros_like(value) if zero else value.clone()
            )
    grown = AutoModelForCausalLM.from_config(config)
    grown.load_state_dict(state)
    return grown


def _init(config: TrainConfig, name: str, tokenizer: Any) -> Any:
    """`name` from the pair in `config.init`, its embeddings grown to the tokenizer (the new
    rows start at the mean of the old ones)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(Path(config.init) / name, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return model


def _batches(
    sequences: list[tuple[list[int], int]], batch_tokens: int, rng: random.Random, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Length-bucketed batches of about `batch_tokens` tokens, shuffled: (input ids, labels)."""
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i][0]), i))
    groups, group, width = [], [], 0
    for i in order:
        width = max(width, len(sequences[i][0]))
        if group and width * (len(group) + 1) > batch_tokens:
            groups.append(group)
            group, width = [], len(sequences[i][0])
        group.append(i)
    if group:
        groups.append(group)
    rng.shuffle(groups)
    batches = []
    for group in groups:
        width = max(len(sequences[i][0]) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        for row, i in enumerate(group):
            tokens, prompt_length = sequences[i]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, prompt_length : len(tokens)] = torch.tensor(tokens[prompt_length:])
        batches.append((ids, labels))
    return batches


def train_model(
    name: str,
    model: Any,
    sequences: list[tuple[list[int], int]],
    config: TrainConfig,
    checkpoint: Path,
    *,
    steps: int,
    pad_id: int,
    progress: bool = True,
    lr: float | None = None,
) -> dict[str, Any]:
    """Train `steps` steps (or until `config.minutes`), resuming from `checkpoint` if present;
    the learning rate warms up to `lr` (default `config.lr`), then follows a cosine to 0."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
    batches = _epoch(sequences, config, 0, pad_id)
    epoch = 0

    peak = config.lr if lr is None else lr

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return peak * (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, steps - config.warmup_steps)
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    model.train()
    bar = tqdm(total=steps, initial=state["step"], desc=name, disable=not progress)
    last_save = time.perf_counter()
    while state["step"] < steps and state["seconds"] < config.minutes * 60:
        step = state["step"]
        if step // len(batches) != epoch:  # a new epoch: a fresh order, fixed by seed and epoch
            epoch = step // len(batches)
            batches = _epoch(sequences, config, epoch, pad_id)
        ids, labels = batches[step % len(batches)]
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=(ids != pad_id).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["seconds"] += time.perf_counter() - start
        state["step"] += 1
        state["losses"].append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update()
        if time.perf_counter() - last_save >= CHECKPOINT_SECONDS:
            _save(checkpoint, model, optimizer, state)
            last_save = time.perf_counter()
    bar.close()
    _save(checkpoint, model, optimizer, state)
    model.eval()
    return state


def _epoch(sequences: list, config: TrainConfig, epoch: int, pad_id: int) -> list:
    """The batches of one epoch, in an order that depends only on the seed and the epoch."""
    return _batches(sequences, config.batch_tokens, random.Random(f"{config.seed}:{epoch}"), pad_id)


def _save(path: Path, model: Any, optimizer: Any, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state}, tmp
    )
    tmp.replace(path)  # atomic: a kill never leaves half a checkpoint


def export_pair(trained: Path, data: Path, dest: Path, *, users: int = 5) -> None:
    """Copy the trained pair into `dest` as float16 weights, with held-out demo users.

    `dest/users.jsonl` holds test-split rows (request, reference, profile): the demo's private
    memories, from users neither model saw in training.
    """
    import shutil

    from transformers import AutoModelForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("specialist", "generalist"):
        model = AutoModelForCausalLM.from_pretrained(trained / name, dtype=torch.float32)
        model.to(torch.float16).save_pretrained(dest / name)
        for item in (trained / name).iterdir():
            if not item.name.startswith("model") and item.name != "config.json":
                shutil.copy(item, dest / name / item.name)  # tokenizer and generation config
    rows = [
        {"user": e.user, "input": e.input, "output": e.output, "profile": e.profile}
        for e in load_longlamp("product_review", "user", "test", data, limit=users)
    ]
    with (dest / "users.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    shutil.copy(trained / "training.json", dest / "training.json")


def _size_text(size: ModelSize) -> str:
    return f"{size.hidden},{size.layers},{size.heads}"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.train_pair", __doc__)
    parser.add_argument("--data", required=True, help="folder written by `python -m eval.world`")
    parser.add_argument("--out", required=True, help="where the pair (and checkpoints) go")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and order")
    for name in ("specialist", "generalist"):
        parser.add_argument(
            f"--{name}-steps",
            type=int,
            default=getattr(TrainConfig, f"{name}_steps"),
            help=f"optimiser steps of the {name}",
        )
        parser.add_argument(
            f"--{name}-size",
            default=_size_text(getattr(TrainConfig, name)),
            help=f"hidden,layers,heads of the {name}",
        )
    parser.add_argument(
        "--minutes", type=float, default=TrainConfig.minutes, help="time cap per model"
    )
    parser.add_argument("--limit", type=int, help="train on the first N examples only")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--export", help="then copy the pair (float16) and held-out demo users into this folder"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=TrainConfig.vocab_size, help="tokenizer size"
    )
    parser.add_argument(
        "--grow-from",
        type=int,
        help="train the generalist at this depth for --seed-steps first, then grow it to its"
        " full depth (each layer followed by copies with zero output projections) and go on",
    )
    parser.add_argument(
        "--seed-steps",
        type=int,
        default=TrainConfig.seed_steps,
        help="optimiser steps of the shallower generalist (with --grow-from)",
    )
    parser.add_argument(
        "--grow-lr", type=float, help="peak learning rate after growing (default: --lr)"
    )
    parser.add_argument(
        "--init",
        help="fine-tune the pair in this folder (e.g. the shipped demo pair) instead of training"
        " from scratch: its tokenizer gains the tool-calling tokens and chat template",
    )
    parser.add_argument(
        "--review-examples", type=int, help="train on the first N review examples only"
    )
    parser.add_argument("--episodes", type=int, help="train on the first N assistant episodes only")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    parser.add_argument(
        "--batch-tokens", type=int, default=TrainConfig.batch_tokens, help="tokens per batch"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=TrainConfig.warmup_steps, help="linear warm-up steps"
    )
    parser.add_argument(
        "--only",
        choices=["specialist", "generalist"],
        help="train one model (e.g. a generalist with its own tokenizer, for the byte path)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = {}
    for name in ("specialist", "generalist"):
        text = getattr(args, f"{name}_size")
        try:
            sizes[name] = ModelSize(*(int(x) for x in text.split(",")))
        except (TypeError, ValueError):
            parser.error(f"--{name}-size must be hidden,layers,heads; got {text!r}")
    config = TrainConfig(
        seed=args.seed,
        vocab_size=args.vocab_size,
        specialist=sizes["specialist"],
        generalist=sizes["generalist"],
        specialist_steps=args.specialist_steps,
        generalist_steps=args.generalist_steps,
        minutes=args.minutes,
        grow_from=args.grow_from,
        seed_steps=args.seed_steps,
        grow_lr=args.grow_lr,
        init=args.init,
        review_examples=args.review_examples,
        episodes=args.episodes,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        batch_tokens=args.batch_tokens,
    )
    train(config, Path(args.data), Path(args.out), limit=args.limit, only=args.only)
    if args.export:
        export_pair(Path(args.out), Path(args.data), Path(args.export))


def train(
    config: TrainConfig,
    data: Path,
    out: Path,
    *,
    limit: int | None = None,
    progress: bool = True,
    only: str | None = None,
) -> None:
    """Tokenizer, then specialist, then generalist (or `only` one of them); each saved as a
    HF model folder in `out`."""
    from transformers import AutoTokenizer

    def first(n: int | None) -> int | None:
        return limit if n is None else min(limit or n, n)

    examples = load_longlamp(
        "product_review", "user", "train", data, limit=first(config.review_examples)
    )
    episodes = load_episodes(data, "train", first(config.episodes))
    tokenizer_dir = out / "tokenizer"
    if tokenizer_dir.exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif config.init:  # a trained folder's tokenizer, or a shipped pair's (extended)
        source = Path(config.init) / "tokenizer"
        source = source if source.exists() else Path(config.init) / "specialist"
        tokenizer = extend_tokenizer(AutoTokenizer.from_pretrained(source))
        tokenizer.save_pretrained(tokenizer_dir)
    else:
        texts = [e.input for e in examples] + [e.output for e in examples]
        texts += [_episode_text(episode) for episode in episodes]
        tokenizer = train_tokenizer(texts, config.vocab_size)
        tokenizer.save_pretrained(tokenizer_dir)
    report_path = out / "training.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    report.update({"examples": len(examples), "episodes": len(episodes)})  # `only` keeps the other
    for name, size, context, steps in (
        ("specialist", config.specialist, True, config.specialist_steps),
        ("generalist", config.generalist, False, config.generalist_steps),
    ):
        if only is not None and name != only:
            continue
        rng = random.Random(f"{config.seed}:{name}:data")
        sequences = build_sequences(
            examples, tokenizer, context=context, k=config.k, rng=rng, share=config.no_context_share
        )
        sequences += build_episode_sequences(
            episodes, tokenizer, private=context, k=config.k, rng=rng, share=config.no_context_share
        )
        entry: dict[str, Any] = {"config": asdict(config), "size": asdict(size)}
        if config.init:
            model = _init(config, name, tokenizer)
        elif name == "generalist" and config.grow_from:
            shallow = ModelSize(size.hidden, config.grow_from, size.heads)
            model = _model(shallow, tokenizer, config.seed)
            state = train_model(
                f"{name} ({shallow.layers} layers)",
                model,
                sequences,
                config,
                out / "checkpoints" / f"{name}-{shallow.layers}-layers.pt",
                steps=config.seed_steps,
                pad_id=tokenizer.pad_token_id,
                progress=progress,
            )
            entry["grown_from"] = {"size": asdict(shallow), **_summary(state)}
            model = grow(model, size.layers)
        else:
            model = _model(size, tokenizer, config.seed)
        grown = name == "generalist" and config.grow_from and not config.init
        state = train_model(
            name,
            model,
            sequences,
            config,
            out / "checkpoints" / f"{name}.pt",
            steps=steps,
            pad_id=tokenizer.pad_token_id,
            progress=progress,
            lr=config.grow_lr if grown else None,
        )
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        report[name] = {
            **entry,
            "parameters": sum(p.numel() for p in model.parameters()),
            **_summary(state),
            "tokens": sum(len(t) for t, _ in sequences),
        }
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _summary(state: dict) -> dict[str, Any]:
    """Steps, seconds and the mean loss of the last 50 steps of a training state."""
    last = state["losses"][-50:]
    return {
        "steps": state["step"],
        "seconds": state["seconds"],
        "final_loss": sum(last) / max(1, len(last)),
    }


def _episode_text(episode: dict) -> str:
    """An episode's words, for the tokenizer: request, call, result and answer."""
    call = json.dumps(episode["call"]["arguments"], ensure_ascii=False)
    parts = [episode["request"], f"{episode['call']['name']} {call}", episode["answer"]]
    return "\n".join([*parts, episode["result"] or PRIVATE_RESULT])


if __name__ == "__main__":
    main()
