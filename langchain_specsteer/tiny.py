"""A tiny, randomly initialised specialist/generalist pair that needs no downloads.

Used by the tests, and by `specsteer demo` only where the shipped trained pair is missing
(`langchain_specsteer/demo_pair`, package data). Its texts are noise: it exercises every code
path, but its acceptance rates and speed-ups mean nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from langchain_specsteer.models import LocalGeneralist, LocalSpecialist

__all__ = ["CORPUS", "pad_output_rows", "tiny_pair", "train_tokenizer"]

CORPUS = [
    "I bought this blender last month and it crushes ice in seconds. Five stars from me.",
    "The headphones sound warm, the bass is deep, but the case feels cheap.",
    "Honestly? The coffee grinder is loud. Still, the grind is even and fast.",
    "My kids love this tent; it survived a storm at the lake without a leak.",
    "Battery life is great: two full days of music, maps and calls.",
    "Le café est délicieux, très aromatique. Crème brûlée à la française!",
    "这个产品很好，我很喜欢。质量不错，价格合理。",
    "Love it 😀👍 would buy again 🎉 — shipping was fast ✨",
    "Write a short review of a kitchen product in the user's own voice.",
    "Summary: solid build, fair price, average manual. Rating: 4 out of 5.",
]


def train_tokenizer(texts: list[str] | None = None, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with BOS/EOS, as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((texts or CORPUS) * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )


def _config(arch: str, tokenizer: Any, hidden: int, layers: int, init: float) -> Any:
    from transformers import LlamaConfig, Qwen3Config

    config_class = {"qwen3": Qwen3Config, "llama": LlamaConfig}[arch]
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        initializer_range=init,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_pair(
    seed: int = 0,
    *,
    specialist_size: tuple[int, int] = (64, 2),
    generalist_size: tuple[int, int] = (128, 4),
    generalist_arch: str = "llama",
    init: float = 0.08,
    tokenizer: Any = None,
) -> tuple[LocalSpecialist, LocalGeneralist]:
    """A random Qwen3 specialist and a random (Llama by default) generalist sharing a tokenizer.

    Args:
        seed: makes the weights reproducible.
        specialist_size: (hidden size, layers) of the specialist.
        generalist_size: (hidden size, layers) of the generalist.
        generalist_arch: "llama" or "qwen3".
        init: initializer range; larger gives peakier next-token distributions.
        tokenizer: a shared tokenizer; trained on `CORPUS` when omitted.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or train_tokenizer()
    torch.manual_seed(seed)
    spec = AutoModelForCausalLM.from_config(_config("qwen3", tokenizer, *specialist_size, init))
    torch.manual_seed(seed + 1)
    gen = AutoModelForCausalLM.from_config(
        _config(generalist_arch, tokenizer, *generalist_size, init)
    )
    return LocalSpecialist(spec, tokenizer), LocalGeneralist(gen, tokenizer)


def pad_output_rows(model: Any, rows: int, *, logit: float = 50.0) -> Any:
    """`model` (a transformers causal LM) with `rows` output rows past its tokenizer, as real
    checkpoints pad their output layer (Qwen3: 151,936 rows for 151,669 tokens).

    The padded output rows get weight 0 and bias `logit`, so with a large `logit` they would
    win every argmax and take nearly all the mass when sampled; the input embeddings grow by
    as many zero rows (untied), so the model accepts the padded ids as a real one does.
    Returns `model`, changed in place.
    """
    old_out, old_in = model.get_output_embeddings(), model.get_input_embeddings()
    width, hidden = old_out.weight.shape
    dtype, device = old_out.weight.dtype, old_out.weight.device
    out = torch.nn.Linear(hidden, width + rows, bias=True, dtype=dtype, device=device)
    inp = torch.nn.Embedding(old_in.num_embeddings + rows, hidden, dtype=dtype, device=device)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:width] = old_out.weight
        out.bias.zero_()
        out.bias[width:] = logit
        inp.weight.zero_()
        inp.weight[: old_in.num_embeddings] = old_in.weight
    model.config.tie_word_embeddings = False
    model.config.vocab_size = width + rows
    model.set_input_embeddings(inp)
    model.set_output_embeddings(out)
    return model
