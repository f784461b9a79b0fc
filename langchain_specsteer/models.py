"""Thin adapters over causal LMs: they only turn token ids into log-prob tensors.

The engine's whole contract with a specialist is two small abstract classes: `Specialist`
(its tokenizer, vocabulary, end-of-text ids, prompts, and `sequence()`) and `ModelSequence`,
one model's view of one growing sequence. Its KV cache always holds a prefix of `tokens`;
`forward()` feeds whatever is not cached yet and returns the next-token log-probs after each
fed position, and `rollback()` cuts both back after a rejection, so a round never re-prefills
the committed text. `LocalSpecialist` and `TokenSequence` implement them with `transformers`;
`llamacpp.LlamaCppSpecialist` with llama.cpp.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from langchain_specsteer.extras import optional_import
from langchain_specsteer.local import LocalSession
from langchain_specsteer.verification import Generalist, vocab_signature

__all__ = [
    "LocalGeneralist",
    "LocalModel",
    "LocalSpecialist",
    "Message",
    "ModelSequence",
    "Specialist",
    "TokenSequence",
    "cache_keyword",
    "encode_messages",
    "encode_prompt",
    "spelled_width",
]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(torch_dtype: Any, device: str) -> Any:
    if torch_dtype is None:
        return torch.float32 if str(device).startswith("cpu") else "auto"
    if isinstance(torch_dtype, str) and torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    return torch_dtype


def cache_keyword(model: Any) -> str:
    """The KV-cache keyword of a model's forward: "cache" (transformers ≥ 5.2x) or the older one."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _split_gguf(model_id: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name): a path to a `.gguf` file is split in two."""
    path = Path(model_id).expanduser()
    if gguf_file is None and path.suffix.lower() == ".gguf" and path.is_file():
        return str(path.parent), path.name
    return model_id, gguf_file


def spelled_width(tokenizer: Any) -> int:
    """1 + the largest token id `tokenizer` has (its length when it holds no gaps)."""
    return max(tokenizer.get_vocab().values()) + 1


class ModelSequence(ABC):
    """One continuation on one model after one or more prompts, with a KV cache of a prefix:
    what the engine holds of a specialist (`Specialist.sequence`).

    With several prompts (the specialist with and without the private context) the rows
    share every token generated after their prompts (`suffix`), so one `forward` gives q_ctx
    and q_gen together.

    Positions count as if the prompts were left-padded to one length: `length` = the longest
    prompt's length + generated tokens, and `rollback(prompt_length + n)` keeps n generated
    tokens.

    Attributes:
        prompts: each row's prompt ids.
        suffix: tokens after the prompts (committed, then any tentative draft tokens).
    """

    def __init__(self, prompts: Sequence[Sequence[int]]):
        if not prompts or any(len(p) == 0 for p in prompts):
            msg = "a prompt is empty: a sequence needs at least one token (e.g. a BOS token)."
            raise ValueError(msg)
        self.prompts = [list(p) for p in prompts]
        self.prompt_length = max(len(p) for p in self.prompts)
        self.suffix: list[int] = []

    @property
    def length(self) -> int:
        return self.prompt_length + len(self.suffix)

    @property
    def tokens(self) -> list[int]:
        """The first row's ids: its prompt and the suffix."""
        return self.prompts[0] + self.suffix

    def row_tokens(self) -> list[list[int]]:
        """Every row's ids: its prompt and the shared suffix."""
        return [p + self.suffix for p in self.prompts]

    def append(self, token_ids: Sequence[int]) -> None:
        """Add tokens to the end without computing anything."""
        self.suffix.extend(token_ids)

    @abstractmethod
    def forward(self, rows: int = 1) -> torch.Tensor:
        """Feed the uncached positions; return (B, rows, V) log-probs at the last `rows` ones.

        Row i along dim 1 is the next-token distribution after position length − rows + i;
        V is the sequence's vocabulary width (padded output rows excluded).
        """

    def rollback(self, length: int) -> None:
        """Keep only the first `length` positions (and at most that much cache)."""
        if length < self.prompt_length:
            msg = f"cannot roll back into the prompt ({length} < {self.prompt_length})"
            raise ValueError(msg)
        del self.suffix[length - self.prompt_length :]
        self.rollback_cache(length)

    @abstractmethod
    def rollback_cache(self, length: int) -> None:
        """Drop cached keys/values past `length` positions."""

    @abstractmethod
    def close(self) -> None:
        """Free the KV cache now (the sequence is not used after)."""


class TokenSequence(ModelSequence):
    """A `ModelSequence` on a `transformers` model (`LocalModel.sequence`).

    Several prompts are left-padded to one length and the rows advance in lockstep as one
    batch.

    Attributes:
        cached: how many leading positions have their keys/values in the cache.
    """

    def __init__(
        self, lm: LocalModel, prompts: Sequence[Sequence[int]], vocab_size: int | None = None
    ):
        super().__init__(prompts)
        from transformers import DynamicCache

        self.lm = lm
        self.cached = 0
        self.cache = DynamicCache()
        self.vocab_size = min(vocab_size or lm.vocab_size, lm.vocab_size)
        pads = [self.prompt_length - len(p) for p in self.prompts]
        padded = [[0] * pad + p for pad, p in zip(pads, self.prompts, strict=True)]
        self._prompt_ids = torch.tensor(padded, dtype=torch.long, device=lm.device)  # (B, P)
        self._pads = torch.tensor(pads, device=lm.device).unsqueeze(-1) if any(pads) else None

    def forward(self, rows: int = 1) -> torch.Tensor:
        """Feed the uncached positions; return (B, rows, V) log-probs at the last `rows` ones.

        Row i along dim 1 is the next-token distribution after position length − rows + i.
        """
        if rows > self.length:
            msg = f"asked for {rows} rows of a {self.length}-token sequence"
            raise ValueError(msg)
        if self.cached > self.length - rows:  # re-feed cached positions whose rows are asked
            self.rollback_cache(self.length - rows)
        start, end = self.cached, self.length
        device = self._prompt_ids.device
        fresh = torch.tensor(
            self.suffix[max(0, start - self.prompt_length) :], dtype=torch.long, device=device
        )
        input_ids = torch.cat(
            [self._prompt_ids[:, start : self.prompt_length], fresh.expand(len(self.prompts), -1)],
            dim=1,
        )  # (B, end - start)
        extra = {}
        if self._pads is not None:  # left padding: mask it, count positions from each prompt
            positions = torch.arange(end, device=device)
            extra["attention_mask"] = (positions >= self._pads).long()  # (B, end)
            extra["position_ids"] = (positions[start:] - self._pads).clamp_min(0)  # (B, fresh)
        keyword = self.lm.cache_keyword
        extra[keyword] = self.cache
        with torch.inference_mode():
            out = self.lm.model(input_ids=input_ids, use_cache=True, logits_to_keep=rows, **extra)
        self.cache = getattr(out, keyword)
        self.cached = end
        self.lm.forward_calls += 1
        logits = out.logits[:, -rows:, : self.vocab_size]  # (B, rows, V)
        return torch.log_softmax(logits.float(), dim=-1)

    def rollback_cache(self, length: int) -> None:
        """Drop cached keys/values past `length` positions."""
        extra = self.cached - length
        if extra > 0:
            self.cache.crop(-extra)  # negative: remove that many (transformers 4.x and 5.x)
            self.cached = length

    def close(self) -> None:
        """Free the KV cache now (the sequence is not used after)."""
        self.cache = None


Message = dict[str, Any]
"""A chat turn as chat templates take it: {"role": ..., "content": ...}, and for tool use
"tool_calls" (an assistant turn's calls) or "name" and "tool_call_id" (a tool result)."""


def encode_messages(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    chat: bool = True,
    chat_template_kwargs: dict | None = None,
) -> list[int]:
    """Token ids of a conversation ending in a user turn, ready for the assistant's reply.

    With `chat` and a tokenizer that has a chat template: the template with the generation
    prompt. Otherwise the turns' contents joined by blank lines (a single user turn is its
    text) with the tokenizer's special tokens.
    """
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            list(messages),
            tokenize=False,
            add_generation_prompt=True,
            **(chat_template_kwargs or {}),
        )
        return tokenizer.encode(rendered, add_special_tokens=False)
    text = "\n\n".join(message["content"] for message in messages)
    return tokenizer.encode(text, add_special_tokens=True)


def encode_prompt(
    tokenizer: Any, text: str, *, chat: bool = True, chat_template_kwargs: dict | None = None
) -> list[int]:
    """Token ids of a user turn: its chat template when asked and the tokenizer has one."""
    return encode_messages(
        tokenizer,
        [{"role": "user", "content": text}],
        chat=chat,
        chat_template_kwargs=chat_template_kwargs,
    )


class Specialist(ABC):
    """The small on-device model, as the engine and the LangChain classes use it: it drafts
    with the private context (q_ctx) and gives q_gen without it.

    `LocalSpecialist` runs it with `transformers`, `llamacpp.LlamaCppSpecialist` with
    llama.cpp (a GGUF file, kept quantised). Both tokenize with a Hugging Face tokenizer, so
    prompts, chat templates, tools and the byte-level path are the same on either.

    Attributes:
        tokenizer: a Hugging Face tokenizer (`encode`, `decode`, `get_vocab`,
            `apply_chat_template`, `chat_template`, special tokens).
    """

    tokenizer: Any

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Token ids the model can output that its tokenizer spells: every log-prob row stops
        there, so a padded output row is never drafted, emitted or sampled."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where its log-prob rows are (the engine's sampling runs there)."""

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""

    @property
    @abstractmethod
    def name(self) -> str:
        """What `model_info()` reports (a hub id or a file path)."""

    @abstractmethod
    def sequence(self, *prompts: Sequence[int], vocab_size: int | None = None) -> ModelSequence:
        """Start a continuation after one prompt, or several that share what follows (q_ctx
        and q_gen in one forward).

        Args:
            *prompts: token ids of each row's prompt.
            vocab_size: log-probs cover the first `vocab_size` tokens (default and at most:
                `vocab_size`).
        """

    @cached_property
    def vocab_signature(self) -> str:
        """Fingerprint of the tokenizer's vocabulary (`verification.vocab_signature`)."""
        return vocab_signature(self.tokenizer)

    def encode(
        self, text: str, *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        """Token ids for a user turn: through the chat template when asked and available."""
        return encode_prompt(
            self.tokenizer, text, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    def encode_messages(
        self,
        messages: Sequence[Message],
        *,
        chat: bool,
        chat_template_kwargs: dict | None = None,
    ) -> list[int]:
        """Token ids for a conversation (`encode_messages`)."""
        return encode_messages(
            self.tokenizer, messages, chat=chat, chat_template_kwargs=chat_template_kwargs
        )


class LocalModel:
    """A Hugging Face causal LM and its tokenizer, in eval mode with gradients off.

    Args:
        model: a `transformers` causal LM (e.g. `AutoModelForCausalLM.from_pretrained(...)`).
        tokenizer: its tokenizer.
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.forward_calls = 0

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        device: str | torch.device | None = None,
        torch_dtype: str | torch.dtype | None = None,
        tokenizer_id: str | None = None,
        gguf_file: str | None = None,
        **model_kwargs: Any,
    ) -> LocalModel:
        """Load a hub id or local path with `transformers`.

        Args:
            model_id: hub id (e.g. "Qwen/Qwen3-0.6B"), a local folder, or a local `.gguf` file.
            device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
            torch_dtype: e.g. torch.bfloat16 or "bfloat16"; default float32 on CPU, "auto" on CUDA.
            tokenizer_id: where the tokenizer lives, if not beside the weights (or in the GGUF).
            gguf_file: a GGUF file in `model_id` (folder or hub repo), e.g.
                "SmolLM2-135M-Instruct.Q4_1.gguf" (llama.cpp, Ollama, LM Studio): the weights,
                the tokenizer and its chat template (when the file has one) all come from it.
                The weights are dequantised on load to `torch_dtype`: the model takes the
                memory and the speed of an unquantised one. Needs the `gguf` extra.
            **model_kwargs: passed to `AutoModelForCausalLM.from_pretrained`.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_id, gguf_file = _split_gguf(model_id, gguf_file)
        tokenizer_options = {}
        if gguf_file is not None:
            optional_import("gguf", extra="gguf", purpose=f"Loading the GGUF file {gguf_file!r}")
            model_kwargs["gguf_file"] = gguf_file
            if tokenizer_id is None:
                tokenizer_options["gguf_file"] = gguf_file
        device = str(device or _default_device())
        dtype = _resolve_dtype(torch_dtype, device)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_id or model_id, **tokenizer_options)
        if gguf_file is not None:  # named after the file, not its folder
            model.config._name_or_path = f"{model_id.rstrip('/')}/{gguf_file}"
        return cls(model.to(device), tokenizer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def output_width(self) -> int:
        """Rows of the model's output layer: often padded past the tokenizer (e.g. Qwen3's
        151,936 rows for 151,669 tokens)."""
        return self.model.get_output_embeddings().weight.shape[0]

    @cached_property
    def vocab_size(self) -> int:
        """Token ids this model can output that its tokenizer spells: the output rows below
        the tokenizer's largest id + 1. Log-probs (`TokenSequence.forward`) cover these only,
        so a padded row is never drafted, emitted, sampled or hinted, on any path."""
        return min(self.output_width, spelled_width(self.tokenizer))

    @cached_property
    def cache_keyword(self) -> str:
        """The forward's KV-cache keyword (`cache_keyword`), looked up once per model."""
        return cache_keyword(self.model)

    @cached_property
    def vocab_signature(self) -> str:
        """Fingerprint of the tokenizer's vocabulary (`verification.vocab_signature`)."""
        return vocab_signature(self.tokenizer)

    @property
    def name(self) -> str:
        return getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation (generation config and tokenizer)."""
        ids: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    def encode(
        self, text: str, *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        """Token ids for a user turn: through the chat template when asked and available."""
        return encode_prompt(
            self.tokenizer, text, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    def encode_messages(
        self,
        messages: Sequence[Message],
        *,
        chat: bool,
        chat_template_kwargs: dict | None = None,
    ) -> list[int]:
        """Token ids for a conversation (`encode_messages`)."""
        return encode_messages(
            self.tokenizer, messages, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    def sequence(self, *prompts: Sequence[int], vocab_size: int | None = None) -> TokenSequence:
        """Start a continuation after one prompt, or several batched in lockstep.

        Args:
            *prompts: token ids of each row's prompt.
            vocab_size: log-probs cover the first `vocab_size` tokens (default and at most:
                `LocalModel.vocab_size`, the ids the tokenizer spells).
        """
        return TokenSequence(self, prompts, vocab_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device})"


class LocalSpecialist(LocalModel, Specialist):
    """The small on-device model in `transformers`: drafts with the private context (q_ctx),
    and gives q_gen."""


class LocalGeneralist(LocalModel, Generalist):
    """The large model, loaded in this process; it only ever receives public token ids."""

    def open_session(
        self,
        prompt: Sequence[int],
        *,
        vocab_size: int,
        temperature: float = 0.0,
        q_gen_prompt: Sequence[int] | None = None,
    ) -> LocalSession:
        """A session on this generalist; q_gen stays with the device's specialist in-process."""
        return LocalSession(self, prompt, vocab_size=vocab_size, temperature=temperature)
