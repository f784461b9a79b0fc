"""`LlamaCppSpecialist`: the specialist on llama.cpp, checked against the transformers one.

The tiny generalist is written as a float32 GGUF file (`tiny.save_gguf`) and run by llama.cpp
with a float32 KV cache and flash attention off, so its rows are the transformers model's to
float32 rounding and every text must be equal, on every method, batched or not, greedy or
sampled, on both alignments. The real quantised files are compared in
test_real_checkpoints.py. Without the `llamacpp` extra the tests skip (all but the one on
its error message).
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_specsteer import (
    METHODS,
    ChatSpecSteer,
    LocalGeneralist,
    LocalSpecialist,
    SpecSteerLLM,
)
from langchain_specsteer.models import Specialist
from tests.conftest import CONTEXT, PROMPTS

SECRET = "Zorblax quantum marmalade, my PIN is 4417, I live at 12 Quibble Lane"
ROWS = {"atol": 2e-5, "rtol": 0}  # float32 rows of two runtimes (measured: max |Δ| 3.8e-6)


@pytest.fixture(scope="module")
def tiny_gguf(generalist, tmp_path_factory):
    """The tiny generalist as a float32 GGUF file with its tokenizer and a ChatML template."""
    pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is not installed")
    from tests.gguf_files import save_gguf

    path = tmp_path_factory.mktemp("llamacpp") / "tiny-llama.F32.gguf"
    save_gguf(generalist, path)
    return path


@pytest.fixture(scope="module")
def from_file(tiny_gguf):
    """The file on llama.cpp, its tokenizer and chat template read from it."""
    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    return LlamaCppSpecialist.from_pretrained(str(tiny_gguf), n_threads=2)


@pytest.fixture(scope="module")
def llama(tiny_gguf, generalist):
    """The file on llama.cpp with the tiny pair's own tokenizer (`transformers`' reading of
    the file adds an `<|endoftext|>` the models have no row for, which the token path
    refuses), so that it shares one vocabulary with the tiny models."""
    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    return LlamaCppSpecialist(
        tiny_gguf,
        tokenizer=generalist.tokenizer,
        n_threads=2,
        cache_dtype="f32",
        flash_attention=False,  # with f16 keys and values, rows differ by ~4e-3
    )


@pytest.fixture(scope="module")
def hf(generalist):
    """The same weights on transformers: the reference."""
    return LocalSpecialist(generalist.model, generalist.tokenizer)


@pytest.fixture(scope="module")
def other(specialist):
    """The generalist of these pairs: the tiny Qwen3 specialist's weights (one vocabulary
    with the file, other weights)."""
    return LocalGeneralist(specialist.model, specialist.tokenizer)


def pair(specialist, generalist, **fields):
    fields.setdefault("max_new_tokens", 12)
    return SpecSteerLLM(specialist=specialist, generalist=generalist, **fields)


def test_it_is_a_specialist_with_the_files_vocabulary_and_template(from_file, llama, hf):
    from tests.gguf_files import CHATML

    assert isinstance(llama, Specialist) and isinstance(hf, Specialist)
    assert from_file.vocab_size == llama.vocab_size == hf.vocab_size == llama.output_width
    assert from_file.tokenizer.chat_template == CHATML
    assert from_file.tokenizer.eos_token_id in from_file.eos_token_ids
    assert llama.device == torch.device("cpu") and llama.name == str(llama.path)
    for text in PROMPTS:  # (llama.cpp's own ids: on the real files, test_real_checkpoints)
        ids = from_file.tokenizer.encode(text, add_special_tokens=False)
        assert ids == hf.tokenizer.encode(text, add_special_tokens=False)


def test_rows_equal_the_transformers_rows(llama, hf):
    for text in PROMPTS:
        ids = hf.encode(text, chat=True)
        got = llama.sequence(ids).forward(len(ids))
        torch.testing.assert_close(got, hf.sequence(ids).forward(len(ids)), **ROWS)


def test_q_ctx_and_q_gen_in_one_decode_equal_each_row_alone(llama, monkeypatch):
    """Two prompts of different lengths share what follows: one `llama_decode` per forward
    gives both rows, each attending only to its own prompt (no padding, own positions)."""
    private, public = (
        llama.encode(f"{SECRET}\n\n{PROMPTS[0]}", chat=True),
        llama.encode(PROMPTS[0], chat=True),
    )
    decodes = count_decodes(llama, monkeypatch)
    both = llama.sequence(private, public)
    both.append([5, 6, 7])
    rows = both.forward(4)  # (2, 4, V)
    assert len(decodes) == 1 and decodes[0] == len(private) + len(public) + 6
    for r, prompt in enumerate((private, public)):
        alone = llama.sequence(prompt)
        alone.append([5, 6, 7])
        torch.testing.assert_close(rows[r], alone.forward(4)[0], **ROWS)


def count_decodes(lm, monkeypatch) -> list[int]:
    """Tokens fed by each `llama_decode` batch from now on."""
    fed: list[int] = []
    decode = type(lm)._decode

    def counted(self, tokens):
        fed.append(len(tokens))
        return decode(self, tokens)

    monkeypatch.setattr(type(lm), "_decode", counted)
    return fed


def test_rollback_removes_the_rejected_cells_without_prefilling_again(llama, monkeypatch):
    import llama_cpp

    prompt = llama.encode(PROMPTS[1], chat=True)
    seq = llama.sequence(prompt)
    seq.forward()
    seq.append([11, 12, 13, 14])  # a draft of 4
    seq.forward(5)
    seq.rollback(len(prompt) + 1)  # one accepted
    seq.append([20])  # the recovered token
    (seq_id,) = seq.seq_ids
    assert llama_cpp.llama_memory_seq_pos_max(llama._memory, seq_id) == len(prompt)
    fed = count_decodes(llama, monkeypatch)
    row = seq.forward()
    assert fed == [1]  # only the recovered token: the committed text stays cached
    fresh = llama.sequence([*prompt, 11, 20]).forward()
    torch.testing.assert_close(row, fresh, **ROWS)
    fed.clear()
    assert seq.forward(3).shape[1] == 3 and fed == [3]  # rows asked again are re-fed


def test_a_closed_or_dropped_sequence_gives_its_ids_back_with_cleared_cells(tiny_gguf, llama):
    import gc

    import llama_cpp

    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    small = LlamaCppSpecialist(tiny_gguf, tokenizer=llama.tokenizer, n_seq_max=2)
    prompt = small.encode(PROMPTS[0], chat=True)
    for _ in range(3):  # ids come back from close() and from garbage collection
        a, b = small.sequence(prompt), small.sequence(prompt)
        a.forward()
        b.forward()
        a.close()
        del b
        gc.collect()
    reused = small.sequence(prompt, prompt)
    for seq_id in reused.seq_ids:  # cleared before reuse
        assert llama_cpp.llama_memory_seq_pos_max(small._memory, seq_id) == -1
    with pytest.raises(RuntimeError, match="n_seq_max"):
        small.sequence(prompt)
    with pytest.raises(RuntimeError, match="closed"):
        a.forward()


@pytest.mark.parametrize("batch_specialist", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_the_transformers_runtimes_text(
    llama, hf, other, method, batch_specialist
):
    fields = {"method": method, "batch_specialist": batch_specialist}
    got = pair(llama, other, **fields).generate(PROMPTS[:2], private_context=CONTEXT)
    assert pair(llama, other)._engine.alignment == "token"
    expected = pair(hf, other, **fields).generate(PROMPTS[:2], private_context=CONTEXT)
    for g, e in zip(got.generations, expected.generations, strict=True):
        assert g[0].text == e[0].text and g[0].text
        info = {k: g[0].generation_info[k] for k in ("new_tokens", "drafted", "accepted")}
        assert info == {k: e[0].generation_info[k] for k in info}


def test_sampling_draws_what_the_transformers_runtime_draws(llama, hf, other):
    fields = {"method": "specsteer", "temperature": 0.8, "seed": 3, "max_new_tokens": 16}
    got = pair(llama, other, **fields).invoke(PROMPTS[0], private_context=CONTEXT)
    assert got == pair(hf, other, **fields).invoke(PROMPTS[0], private_context=CONTEXT)


def test_greedy_speculative_is_the_generalists_text_on_the_byte_path(llama, hf, cross_generalist):
    """Different tokenizers: the specialist's token bytes come from the GGUF vocabulary."""
    llm = pair(llama, cross_generalist, max_new_tokens=10)
    assert llm._engine.alignment == "byte"
    speculative = llm.generate([PROMPTS[2]], private_context=CONTEXT, method="speculative")
    assert speculative.generations[0][0].generation_info["drafted"] > 0
    text = speculative.generations[0][0].text
    assert text == llm.invoke(PROMPTS[2], method="generalist")
    for method in ("specsteer", "light_costeer"):
        expected = pair(hf, cross_generalist, max_new_tokens=10, method=method)
        got = llm.invoke(PROMPTS[2], private_context=CONTEXT, method=method)
        assert got == expected.invoke(PROMPTS[2], private_context=CONTEXT)


def test_the_chat_model_and_its_tools_answer_as_on_transformers(llama, hf, other):
    @tool
    def recall_memory(query: str) -> str:
        """Look something up in the user's notes."""
        return "nothing"

    messages = [SystemMessage("Be brief."), HumanMessage(PROMPTS[0])]
    replies = []
    for specialist in (llama, hf):
        chat = ChatSpecSteer(specialist=specialist, generalist=other, max_tokens=10)
        replies.append(chat.bind_tools([recall_memory]).invoke(messages, private_context=SECRET))
    assert replies[0].content == replies[1].content and replies[0].content
    assert replies[0].tool_calls == replies[1].tool_calls


def test_concurrent_generations_share_the_context(llama, other):
    """`ainvoke` runs each generation on its own worker thread, all on one llama.cpp
    context."""
    llm = pair(llama, other, method="specsteer")
    contexts = [CONTEXT, None, "I only drink tea."]
    sync = [llm.invoke(p, private_context=c) for p, c in zip(PROMPTS, contexts, strict=True)]

    async def run_all():
        calls = [llm.ainvoke(p, private_context=c) for p, c in zip(PROMPTS, contexts, strict=True)]
        return await asyncio.gather(*calls)

    assert asyncio.run(run_all()) == sync


def test_no_private_token_reaches_the_public_side(llama, other, monkeypatch):
    """As tests/langchain_specsteer/test_privacy.py records it: the only llama.cpp row that
    holds the private prompt is q_ctx's, and the generalist's inputs hold no private run."""
    from langchain_specsteer.llamacpp import LlamaCppSequence

    sequences, inputs = [], []
    init = LlamaCppSequence.__init__

    def recording_init(self, lm, prompts, vocab_size=None):
        init(self, lm, prompts, vocab_size)
        sequences.append(self)

    monkeypatch.setattr(LlamaCppSequence, "__init__", recording_init)
    hook = other.model.register_forward_pre_hook(
        lambda _m, _a, kw: inputs.append(kw["input_ids"][0].tolist()), with_kwargs=True
    )
    secret = llama.tokenizer.encode(SECRET, add_special_tokens=False)
    secret_runs = {tuple(secret[i : i + 3]) for i in range(len(secret) - 2)}
    try:
        for batch_specialist in (False, True):
            llm = pair(llama, other, method="specsteer", batch_specialist=batch_specialist)
            prompts = llm.render_prompts(PROMPTS[0], SECRET)
            sequences.clear()
            assert llm.invoke(PROMPTS[0], private_context=SECRET)
            rows = [row for seq in sequences for row in seq.row_tokens()]
            private = [row for row in rows if row[: len(prompts.private)] == prompts.private]
            assert len(private) == 1 and len(rows) == 2  # q_ctx, and q_gen without it
            for ids in [*(row for row in rows if row not in private), *inputs]:
                assert not {tuple(ids[i : i + 3]) for i in range(len(ids) - 2)} & secret_runs
    finally:
        hook.remove()
    assert inputs  # the recording was live


def test_padded_rows_past_the_tokenizer_stay_masked(tiny_gguf):
    """A tokenizer spelling fewer ids than the output rows: rows stop at its width, so no
    padded id is ever drafted or emitted."""
    from langchain_specsteer.llamacpp import LlamaCppSpecialist
    from langchain_specsteer.tiny import train_tokenizer

    tokenizer = train_tokenizer(vocab_size=400)
    small = LlamaCppSpecialist(tiny_gguf, tokenizer=tokenizer)
    assert small.output_width > small.vocab_size == 400
    rows = small.sequence([1, 2, 3]).forward(2)
    assert rows.shape == (1, 2, 400)
    torch.testing.assert_close(rows.exp().sum(-1), torch.ones(1, 2))


def test_from_pretrained_picks_the_runtime(tiny_gguf, tiny_dir, from_file):
    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    folder, name = str(tiny_gguf.parent), tiny_gguf.name
    llm = SpecSteerLLM.from_pretrained(
        folder,
        str(tiny_dir / "generalist"),
        specialist_gguf_file=name,
        specialist_runtime="llama.cpp",
        device="cpu",
        max_new_tokens=6,
    )
    assert isinstance(llm.specialist, LlamaCppSpecialist)
    assert llm.invoke(PROMPTS[0], method="speculative") == llm.invoke(
        PROMPTS[0], method="generalist"
    )
    by_folder = LlamaCppSpecialist.from_pretrained(folder, tokenizer=from_file.tokenizer)
    assert by_folder.path == tiny_gguf  # the folder's one .gguf file
    with pytest.raises(ValueError, match="specialist_runtime"):
        SpecSteerLLM.from_pretrained(folder, folder, specialist_runtime="onnx")


def test_without_the_extra_the_error_names_it(monkeypatch, tmp_path):
    from langchain_specsteer.llamacpp import LlamaCppSpecialist

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "langchain-specsteer\[llamacpp\]"'):
        LlamaCppSpecialist(tmp_path / "model.gguf")
