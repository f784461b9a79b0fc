"""The specialist on llama.cpp: a GGUF file run quantised, as laptops and phones run it.

`LlamaCppSpecialist` is the `models.Specialist` contract over `llama-cpp-python`'s low-level
API (the `llamacpp` extra). Everything but the forward pass is the transformers
specialist's: the tokenizer is `transformers`' tokenizer of the same GGUF file (so prompt
ids, the chat template in the file, tools and the byte-level tables are the same on either
runtime), and the engine samples from the log-prob rows as it does with `LocalSpecialist`.

One llama.cpp context serves every sequence of a specialist: each prompt row of a
`LlamaCppSequence` is a llama.cpp sequence id in one unified KV cache, so

- q_ctx and q_gen (`specialist.sequence(private, public)`, the engine's `batch_specialist`)
  go through one `llama_decode`, each row attending only to its own cells, at its own
  positions (no padding);
- a rejected draft is rolled back with `llama_memory_seq_rm`: the committed text is never
  prefilled again;
- a sequence's id goes back to the pool when it is closed or garbage-collected, and its cells
  are cleared before the id is used again.

What it keeps of llama.cpp: the file's quantisation and its kernels (SmolLM2-135M Q4_1:
13 ms per token and 310 MiB added, against 142 ms and 720 MiB dequantised by `transformers`,
on a busy 2-core machine; docs/real-checkpoints.md).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from langchain_specsteer.extras import optional_import
from langchain_specsteer.models import ModelSequence, Specialist, _split_gguf, spelled_width

__all__ = ["LlamaCppSequence", "LlamaCppSpecialist"]


def _llama_cpp() -> Any:
    """The `llama_cpp` module, or an ImportError naming the extra."""
    return optional_import(
        "llama_cpp", extra="llamacpp", purpose="LlamaCppSpecialist", package="llama-cpp-python"
    )


_CACHE_TYPES = {"f16": lambda llama: llama.GGML_TYPE_F16, "f32": lambda llama: llama.GGML_TYPE_F32}
"""KV-cache dtypes, as llama.cpp's `ggml_type`."""

_BACKEND = threading.Lock()
_backend_ready = False


def _init_backend(llama: Any, verbose: bool) -> None:
    """`llama_backend_init` once per process; llama.cpp's log quiet unless `verbose` (the
    level of the `llama-cpp-python` logger, as `Llama(verbose=...)` sets it)."""
    global _backend_ready
    logger = logging.getLogger("llama-cpp-python")
    if verbose:
        logger.setLevel(logging.DEBUG)
    elif logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    with _BACKEND:
        if not _backend_ready:
            llama.llama_backend_init()
            _backend_ready = True


class _Slots:
    """The context's sequence ids: handed out, given back, and cleared before reuse.

    A sequence gives its ids back from a finaliser, which may run on any thread at any time,
    so giving back only queues them; `take` (under the specialist's lock) clears their cells.
    """

    def __init__(self, count: int):
        self.count = count
        self.free = list(range(count))
        self.returned: list[int] = []

    def give_back(self, ids: list[int]) -> None:
        self.returned.extend(ids)  # one list operation: safe from any thread

    def clear_returned(self, remove: Any) -> None:
        while self.returned:
            seq_id = self.returned.pop()
            remove(seq_id, -1, -1)
            self.free.append(seq_id)

    def take(self, count: int, remove: Any) -> list[int]:
        self.clear_returned(remove)
        if len(self.free) < count:
            gc.collect()  # sequences only a reference cycle still holds
            self.clear_returned(remove)
        if len(self.free) < count:
            msg = (
                f"all {self.count} llama.cpp sequences are in use: give LlamaCppSpecialist a "
                "larger n_seq_max (each generation takes one or two)"
            )
            raise RuntimeError(msg)
        taken, self.free = self.free[:count], self.free[count:]
        return taken


class LlamaCppSpecialist(Specialist):
    """The specialist run by llama.cpp from a GGUF file, kept quantised.

    Args:
        model_path: the `.gguf` file.
        n_ctx: KV-cache cells shared by all live sequences (a generation holds its private
            prompt, its public one when q_gen is computed here, and their continuations).
        n_threads: CPU threads for llama.cpp (default: torch's, as the transformers
            specialist uses).
        n_seq_max: sequences alive at once (two per generation at most).
        n_batch: the most tokens one `llama_decode` takes (longer prompts go in pieces).
        n_gpu_layers: layers offloaded to a GPU, for a llama.cpp built with one (the
            log-prob rows still come back to the CPU).
        cache_dtype: the KV cache's keys and values: "f16" (llama.cpp's default, half the
            memory) or "f32".
        flash_attention: llama.cpp's flash attention (None: llama.cpp decides; on a CPU it
            computes in float16). Off with `cache_dtype="f32"`, a float32 file's rows are a
            float32 `transformers` model's to about 1e-5 (on, about 4e-3).
        tokenizer: a Hugging Face tokenizer of the same vocabulary (default: `transformers`'
            tokenizer of the GGUF file itself, which needs the `gguf` package).
        verbose: let llama.cpp's log through.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_seq_max: int = 8,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        cache_dtype: Literal["f16", "f32"] = "f16",
        flash_attention: bool | None = None,
        tokenizer: Any = None,
        verbose: bool = False,
    ):
        llama = _llama_cpp()
        path = Path(model_path).expanduser()
        if not path.is_file():
            msg = f"no GGUF file at {str(path)!r}"
            raise FileNotFoundError(msg)
        if tokenizer is None:
            tokenizer = gguf_tokenizer(str(path.parent), path.name)
        self.tokenizer = tokenizer
        self.path = path
        self.forward_calls = 0
        self._llama = llama
        _init_backend(llama, verbose)

        model_params = llama.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        model = llama.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            msg = f"llama.cpp could not load {str(path)!r}"
            raise ValueError(msg)
        threads = n_threads or torch.get_num_threads()
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = _CACHE_TYPES[cache_dtype](llama)
        if flash_attention is not None:
            params.flash_attn_type = int(flash_attention)  # llama_flash_attn_type: 0 off, 1 on
        params.kv_unified = True  # every sequence may use any cell (n_ctx is not split)
        params.swa_full = True  # sliding-window layers keep every cell: rollback stays exact
        context = llama.llama_init_from_model(model, params)
        if not context:
            llama.llama_model_free(model)
            msg = f"llama.cpp could not make a context of {n_ctx} cells for {str(path)!r}"
            raise ValueError(msg)
        batch = llama.llama_batch_init(n_batch, 0, 1)
        self._finalizer = weakref.finalize(self, _free, llama, model, context, batch)
        self._model, self._context, self._batch = model, context, batch
        self._memory = llama.llama_get_memory(context)
        self._vocab = llama.llama_model_get_vocab(model)
        self.n_ctx = llama.llama_n_ctx(context)
        self.n_batch = n_batch
        self.n_threads = threads
        self.output_width = llama.llama_vocab_n_tokens(self._vocab)
        self._lock = threading.RLock()  # one llama_decode (or cache edit) at a time
        self._slots = _Slots(n_seq_max)

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, gguf_file: str | None = None, **options: Any
    ) -> LlamaCppSpecialist:
        """Load a GGUF file: a path to it, a folder and `gguf_file`, or a hub repository and
        `gguf_file` (downloaded to the hub cache), as `LocalSpecialist.from_pretrained` takes
        it. The tokenizer and chat template come from the same file.

        Args:
            model_id: a `.gguf` file, a local folder, or a hub repository id.
            gguf_file: the file's name in `model_id` (needed unless the folder holds one
                `.gguf` file).
            **options: `LlamaCppSpecialist`'s (`n_ctx`, `n_threads`, ...).
        """
        folder, name = _split_gguf(model_id, gguf_file)
        local = Path(folder).expanduser()
        if name is None and local.is_dir():
            found = sorted(p.name for p in local.glob("*.gguf"))
            if len(found) != 1:
                msg = f"{folder!r} holds {len(found)} .gguf files: name one with gguf_file="
                raise ValueError(msg)
            name = found[0]
        if name is None:
            msg = f"{model_id!r} is not a .gguf file: name one with gguf_file="
            raise ValueError(msg)
        if local.is_dir():
            path = local / name
        else:  # a hub repository
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(folder, name))
        if "tokenizer" not in options:
            options["tokenizer"] = gguf_tokenizer(str(path.parent), path.name)
        return cls(path, **options)

    # ------------------------------------------------------------------ the Specialist contract

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @cached_property
    def vocab_size(self) -> int:
        """Output rows the tokenizer spells (`models.LocalModel.vocab_size`, the same rule)."""
        return min(self.output_width, spelled_width(self.tokenizer))

    @cached_property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's end of text and every end-of-generation token of the GGUF
        vocabulary (llama.cpp's own stop set: e.g. `<end_of_turn>` besides `<eos>`)."""
        is_eog = self._llama.llama_vocab_is_eog
        ids = {t for t in range(self.output_width) if is_eog(self._vocab, t)}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    def sequence(self, *prompts: Sequence[int], vocab_size: int | None = None) -> LlamaCppSequence:
        return LlamaCppSequence(self, prompts, vocab_size)

    def close(self) -> None:
        """Free the model and its context now (the specialist is not used after)."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n_ctx={self.n_ctx})"

    # ------------------------------------------------------------------ llama.cpp calls

    def _remove(self, seq_id: int, start: int, end: int = -1) -> None:
        """Drop `seq_id`'s cells at positions [start, end) (end −1: to the end)."""
        if not self._llama.llama_memory_seq_rm(self._memory, seq_id, start, end):
            msg = f"llama.cpp could not remove positions {start}.. of sequence {seq_id}"
            raise RuntimeError(msg)

    def _take_ids(self, count: int) -> list[int]:
        with self._lock:
            return self._slots.take(count, self._remove)

    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Feed (token, position, sequence id, wants logits) in order, `n_batch` at a time;
        the logits asked for, (outputs, output_width) in the same order."""
        llama, batch, width = self._llama, self._batch, self.output_width
        out = []
        for start in range(0, len(tokens), self.n_batch):
            piece = tokens[start : start + self.n_batch]
            for i, (token, position, seq_id, logits) in enumerate(piece):
                batch.token[i] = token
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = logits
            batch.n_tokens = len(piece)
            status = llama.llama_decode(self._context, batch)
            if status != 0:
                full = f": its {self.n_ctx} cells are full, raise n_ctx" if status == 1 else ""
                msg = f"llama_decode failed ({status}){full}"
                raise RuntimeError(msg)
            for i, (*_, logits) in enumerate(piece):
                if logits:
                    row = llama.llama_get_logits_ith(self._context, i)
                    out.append(np.ctypeslib.as_array(row, shape=(width,)).copy())
        self.forward_calls += 1
        return np.stack(out)


def gguf_tokenizer(folder: str, gguf_file: str) -> Any:
    """`transformers`' tokenizer of a GGUF file (its vocabulary, merges, special tokens and
    chat template); needs the `gguf` package."""
    optional_import("gguf", extra="llamacpp", purpose=f"The tokenizer of {gguf_file!r}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


def _free(llama: Any, model: Any, context: Any, batch: Any) -> None:
    llama.llama_batch_free(batch)
    llama.llama_free(context)
    llama.llama_model_free(model)


class LlamaCppSequence(ModelSequence):
    """A `ModelSequence` on a `LlamaCppSpecialist`: each prompt row is one llama.cpp sequence
    id of the specialist's context, at its own positions (row r's suffix starts at
    len(prompts[r])), so rows need no padding and one `llama_decode` feeds them all.

    Attributes:
        seq_ids: each row's llama.cpp sequence id.
        cached: each row's tokens whose cells are in the cache.
    """

    def __init__(
        self,
        lm: LlamaCppSpecialist,
        prompts: Sequence[Sequence[int]],
        vocab_size: int | None = None,
    ):
        super().__init__(prompts)
        self.lm = lm
        self.vocab_size = min(vocab_size or lm.vocab_size, lm.vocab_size)
        self.seq_ids = lm._take_ids(len(self.prompts))
        self.cached = [0] * len(self.prompts)
        self._finalizer = weakref.finalize(self, lm._slots.give_back, list(self.seq_ids))

    def forward(self, rows: int = 1) -> torch.Tensor:
        """Feed every row's uncached tokens in one `llama_decode`; return (B, rows, V)
        log-probs at each row's last `rows` positions."""
        shortest = min(len(p) for p in self.prompts) + len(self.suffix)
        if rows > shortest:
            msg = f"asked for {rows} rows of a {shortest}-token sequence"
            raise ValueError(msg)
        if not (self._finalizer.alive and self.lm._finalizer.alive):
            msg = "this sequence (or its specialist) was closed"
            raise RuntimeError(msg)
        lm, fed = self.lm, []
        with lm._lock:
            lm._slots.clear_returned(lm._remove)
            for r, tokens in enumerate(self.row_tokens()):
                first = len(tokens) - rows  # the first position whose row is asked
                if self.cached[r] > first:  # re-feed cached positions whose rows are asked
                    lm._remove(self.seq_ids[r], first)
                    self.cached[r] = first
                for position in range(self.cached[r], len(tokens)):
                    fed.append((tokens[position], position, self.seq_ids[r], position >= first))
            try:
                logits = lm._decode(fed)  # (B * rows, output_width)
            except RuntimeError:
                for r, seq_id in enumerate(self.seq_ids):  # back to the cache before the call
                    lm._remove(seq_id, self.cached[r])
                raise
            self.cached = [len(p) + len(self.suffix) for p in self.prompts]
        logits = torch.from_numpy(logits[:, : self.vocab_size])
        return torch.log_softmax(logits.view(len(self.prompts), rows, -1), dim=-1)

    def rollback_cache(self, length: int) -> None:
        """Drop cached cells past `length` positions (each row's own: length counts the
        longest prompt)."""
        with self.lm._lock:
            for r, seq_id in enumerate(self.seq_ids):
                keep = length - self.prompt_length + len(self.prompts[r])
                if self.cached[r] > keep:
                    self.lm._remove(seq_id, keep)
                    self.cached[r] = keep

    def close(self) -> None:
        """Give the sequence ids back (their cells are cleared before they are reused)."""
        self._finalizer()
