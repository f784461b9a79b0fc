"""Model adapters: loading options, eval mode, and the KV-cached `TokenSequence`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from langchain_specsteer import LocalGeneralist, LocalSpecialist
from langchain_specsteer.models import cache_keyword
from tests.conftest import CONTEXT, PROMPTS

PROMPT = PROMPTS[0]


def full_forward(lm, ids):
    with torch.no_grad():
        return torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)


def test_from_pretrained_loads_in_eval_mode_without_gradients(tiny_dir):
    lm = LocalSpecialist.from_pretrained(str(tiny_dir / "specialist"), device="cpu")
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.device == torch.device("cpu")
    assert next(lm.model.parameters()).dtype == torch.float32
    assert lm.eos_token_ids == {lm.tokenizer.eos_token_id}


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16"])
def test_torch_dtype_option(tiny_dir, dtype):
    lm = LocalGeneralist.from_pretrained(str(tiny_dir / "generalist"), torch_dtype=dtype)
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    rows = lm.sequence([1, 5, 9]).forward(2)[0]
    assert rows.dtype == torch.float32 and torch.allclose(rows.exp().sum(-1), torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_option(tiny_dir):
    lm = LocalGeneralist.from_pretrained(str(tiny_dir / "generalist"), device="cuda")
    assert lm.device.type == "cuda"
    assert lm.sequence([1, 5, 9]).forward().device.type == "cuda"


def test_a_missing_model_path_fails_clearly(tmp_path):
    with pytest.raises(OSError, match="does-not-exist"):
        LocalSpecialist.from_pretrained(str(tmp_path / "does-not-exist"))


def test_sequence_forward_matches_a_full_forward_after_rollbacks(generalist):
    ids = generalist.tokenizer.encode("The blender crushes ice in seconds, five stars.")
    seq = generalist.sequence(ids[:4])
    assert torch.allclose(seq.forward(2)[0], full_forward(generalist, ids[:4])[-2:], atol=1e-5)
    seq.append([7, 8, 9])  # a draft that is then rejected
    seq.forward(3)
    seq.rollback(4)
    seq.append(ids[4:8])
    assert seq.cached == 4
    expected = full_forward(generalist, ids[:8])[-4:]
    assert torch.allclose(seq.forward(4)[0], expected, atol=1e-5)
    assert seq.cached == 8 == seq.cache.get_seq_length()
    assert torch.allclose(seq.forward(1)[0], expected[-1:], atol=1e-5)  # fully cached: re-fed
    # rows of cached positions are recomputed (a retried round asks for them again)
    assert torch.allclose(seq.forward(3)[0], expected[-3:], atol=1e-5)
    assert seq.cached == 8 == seq.cache.get_seq_length()
    with pytest.raises(ValueError, match="9 rows of a 8-token sequence"):
        seq.forward(9)


def test_an_empty_prompt_is_refused(generalist):
    with pytest.raises(ValueError, match="at least one token"):
        generalist.sequence([])
    with pytest.raises(ValueError, match="at least one token"):
        generalist.sequence([1, 2], [])


def test_batched_prompts_match_separate_sequences_through_rollbacks(specialist):
    """Rows of a left-padded batch equal each prompt's own sequence, step after step."""
    encode = specialist.tokenizer.encode
    long, short = encode("Here is what we know: crunchy, five stars. Review:"), encode("Review:")
    pair = specialist.sequence(long, short)
    alone = [specialist.sequence(long), specialist.sequence(short)]
    assert pair.length == len(long)
    for draft, keep in (([11, 12, 13], 2), ([14], 1), ([15, 16], 0)):
        for seq in (pair, *alone):
            seq.append(draft)
        batched = pair.forward(len(draft) + 1)
        for row, seq in enumerate(alone):
            single = seq.forward(batched.shape[1])[0]
            assert torch.allclose(batched[row], single, atol=1e-4)
        for seq in (pair, *alone):
            seq.rollback(seq.length - len(draft) + keep)
            seq.append([20 + keep])
    assert pair.row_tokens() == [alone[0].tokens, alone[1].tokens]
    with pytest.raises(ValueError, match="into the prompt"):
        pair.rollback(len(long) - 1)


def test_encode_without_a_chat_template_adds_bos(specialist):
    ids = specialist.encode("hi", chat=True)
    assert ids[0] == specialist.tokenizer.bos_token_id
    assert specialist.tokenizer.decode(ids[1:]) == "hi"


def test_a_generation_uses_the_current_cache_keyword_without_deprecations(make_llm):
    """transformers warns once per process of `past_key_values` (a FutureWarning from the
    forward's kwarg and a `logger.warning_once`): neither may come from a generation."""
    import logging
    import warnings

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logging.Logger.warning_once.cache_clear()  # transformers' once-per-process memo
    handler, logger = Records(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = make_llm(max_new_tokens=8, gamma=0.0).invoke(PROMPT, private_context="x y")
    finally:
        logger.removeHandler(handler)
    assert text
    said = [str(w.message) for w in caught] + handler.messages
    assert not [m for m in said if "past_key_values" in m or "deprecated" in m], said


class OldCacheKeyword(torch.nn.Module):
    """A model whose forward takes the KV cache as `past_key_values` (transformers 4.x)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def device(self):
        return self.inner.device

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, past_key_values=None, use_cache=None, logits_to_keep=0, **extra):
        keyword = cache_keyword(self.inner)
        out = self.inner(
            input_ids=input_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{keyword: past_key_values},
            **extra,
        )
        return SimpleNamespace(logits=out.logits, past_key_values=getattr(out, keyword))


def test_the_cache_keyword_is_read_from_the_forward_signature(generalist):
    import inspect

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, **kwargs):
            return None

    class Bare(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return None

    installed = inspect.signature(generalist.model.forward).parameters
    assert cache_keyword(generalist.model) in installed  # "cache" on transformers ≥ 5.2x
    assert cache_keyword(New()) == "cache"
    assert cache_keyword(OldCacheKeyword(generalist.model)) == "past_key_values"
    assert cache_keyword(Bare()) == "past_key_values"  # unknown: the long-supported name


def test_a_model_with_the_old_cache_keyword_decodes_alike(generalist):
    """Older transformers (≥ 4.56, as pyproject allows) still get their KV cache."""
    old = LocalGeneralist(OldCacheKeyword(generalist.model), generalist.tokenizer)
    assert old.cache_keyword == "past_key_values"
    ids = generalist.tokenizer.encode("The blender crushes ice in seconds.")
    new_seq, old_seq = generalist.sequence(ids[:4]), old.sequence(ids[:4])
    for seq in (new_seq, old_seq):
        seq.forward(2)
        seq.append(ids[4:7])
    expected = new_seq.forward(3)
    assert torch.allclose(old_seq.forward(3), expected, atol=1e-5)
    assert old_seq.cached == 7 == old_seq.cache.get_seq_length()  # fed incrementally, cached


@pytest.mark.parametrize(
    ("module", "category", "message", "fails"),
    [
        ("langchain_specsteer.models", DeprecationWarning, "old api", True),
        ("retrievers.memory", FutureWarning, "old api", True),
        ("eval.runner", DeprecationWarning, "old api", True),
        ("torch.nn.modules.module", FutureWarning, "`past_key_values` is deprecated", True),
        ("evaluate.loading", DeprecationWarning, "old api", False),  # not ours
        ("torch.nn.modules.module", UserWarning, "`x` is deprecated", False),
    ],
)
def test_the_suite_fails_on_deprecations_from_our_calls(
    pytestconfig, module, category, message, fails
):
    """pyproject's filterwarnings: a deprecation our code triggers is an error in the tests."""
    import warnings

    from _pytest.config import parse_warning_filter

    def warn():
        warnings.warn_explicit(message, category, "f.py", 1, module=module)

    with warnings.catch_warnings():  # pyproject's filters alone, whatever -W said
        warnings.simplefilter("always")
        for line in pytestconfig.getini("filterwarnings"):
            warnings.filterwarnings(*parse_warning_filter(line, escape=False))
        if fails:
            with pytest.raises(category, match=message.strip("`")):
                warn()
        else:
            with pytest.warns(category):
                warn()


# --------------------------------------------------------------------- padded output rows


def _rounds(specialist, generalist, *, alignment="auto", prompt=PROMPT, **params):
    """Every `Round` of one generation on the engine, with `params` as `DecodingParams`."""
    from langchain_specsteer import SpecSteerLLM

    llm = SpecSteerLLM(specialist=specialist, generalist=generalist, alignment=alignment)
    options = {"max_new_tokens": 12, "draft_tokens": 3, **params}
    run = llm.rounds(prompt, private_context=CONTEXT, **options)
    return list(run)


def test_padded_output_rows_are_cut_from_the_log_probs(padded_pair):
    """Rows past the tokenizer would win the raw argmax; the adapter's rows end before them."""
    specialist, _ = padded_pair
    spelled = len(specialist.tokenizer)
    assert specialist.output_width == spelled + 40
    assert specialist.vocab_size == spelled
    ids = specialist.tokenizer.encode(PROMPT)
    assert int(full_forward(specialist, ids)[-1].argmax()) >= spelled  # they would win
    for vocab_size in (None, specialist.output_width):  # asked wider: still cut
        rows = specialist.sequence(ids, vocab_size=vocab_size).forward(2)[0]
        assert rows.shape == (2, spelled)
        assert torch.allclose(rows.exp().sum(-1), torch.ones(2))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("specsteer", {"gamma": 0.0}),  # accepts every draft: the drafts are the output
        ("specsteer", {}),
        ("speculative", {}),
        ("generalist", {}),
        ("specialist", {}),
        ("light_costeer", {}),
        ("costeer", {}),
    ],
)
def test_padded_rows_are_never_drafted_emitted_or_sampled(padded_pair, method, knobs, temperature):
    """One tokenizer, both models padded with winning rows: every token written is spelled."""
    if method == "speculative" and temperature:
        knobs = {"top_p": 0.9}  # speculative sampling's residual path, too
    rounds = _rounds(*padded_pair, method=method, temperature=temperature, seed=1, **knobs)
    tokens = [t for r in rounds for t in r.tokens]
    assert len(tokens) == 12
    assert max(tokens) < len(padded_pair[0].tokenizer)


@pytest.mark.parametrize("padded_generalist", [False, True])
@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("specsteer", {"gamma": 0.0}),
        ("specsteer", {"temperature": 1.0, "seed": 2}),  # crashed: a draft mixing both
        ("specsteer", {"byte_recovery": "token"}),
        ("speculative", {}),
        ("generalist", {}),
        ("specialist", {"temperature": 1.0, "seed": 2}),
    ],
)
def test_padded_rows_never_reach_the_byte_path(
    request, padded_pair, method, knobs, padded_generalist
):
    """Different tokenizers, the specialist (and the generalist) padded with winning rows: no
    IndexError on the specialist's byte table, and every committed token is spelled."""
    specialist = padded_pair[0]
    name = "padded_cross_generalist" if padded_generalist else "cross_generalist"
    generalist = request.getfixturevalue(name)
    rounds = _rounds(specialist, generalist, method=method, **knobs)
    writer = specialist if method == "specialist" else generalist
    tokens = [t for r in rounds for t in r.tokens]
    assert tokens and max(tokens) < len(writer.tokenizer)
    assert b"".join(r.data for r in rounds)


def test_the_service_never_offers_padded_rows(padded_pair):
    """The verifier service's session hints and OpenAI-compatible log-probs, asked for every
    row they have, list only ids the tokenizer spells; padded ids are refused as input."""
    from fastapi.testclient import TestClient

    from langchain_specsteer.server import ServiceLimits, VerifierService, create_app

    specialist, generalist = padded_pair
    spelled = len(generalist.tokenizer)
    wide = generalist.output_width
    limits = ServiceLimits(max_top_m=wide, max_logprobs=wide)
    service = VerifierService(generalist, specialist, limits=limits)
    http = TestClient(create_app(service))
    s = "/specsteer/v1"
    assert http.get(f"{s}/info").json()["vocab_size"] == spelled
    opened = {"prompt_ids": [1, 5, 9], "q_gen_prompt_ids": [1, 9], "top_m": spelled}
    sid = http.post(f"{s}/sessions", json=opened).json()["session_id"]
    body = {"position": 0, "draft": [5, 6], "rule": "device"}
    hints = http.post(f"{s}/sessions/{sid}/rounds", json=body).json()["hints"]
    assert hints and all(sorted(h["token_ids"]) == list(range(spelled)) for h in hints)
    for temperature in (0.0, 1.0):
        body = {"prompt": [1, 5, 9], "max_tokens": 1, "logprobs": wide, "temperature": temperature}
        body.update(echo=True, prompt_logprobs=wide, return_tokens_as_token_ids=True)
        choice = http.post("/v1/completions", json=body).json()["choices"][0]
        listed = [
            int(t.split(":")[1]) for top in choice["logprobs"]["top_logprobs"][1:] for t in top
        ]
        listed += [int(t) for top in choice["prompt_logprobs"][1:] for t in top]
        assert listed and max(listed) < spelled
        assert int(choice["logprobs"]["tokens"][-1].split(":")[1]) < spelled
    refused = http.post("/v1/completions", json={"prompt": [1, spelled], "max_tokens": 1})
    assert refused.status_code == 400 and "outside the vocabulary" in refused.text


# --------------------------------------------------------------------- GGUF files


@pytest.fixture(scope="module")
def tiny_gguf(generalist, tmp_path_factory):
    """The tiny generalist written as a float32 GGUF with its tokenizer and a ChatML template."""
    pytest.importorskip("gguf", reason="the [gguf] extra is not installed")
    from tests.gguf_files import save_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    save_gguf(generalist, path)
    return path


def test_a_gguf_file_loads_with_its_tokenizer_and_chat_template(tiny_gguf, generalist):
    """`gguf_file=` (or a path to the file) gives the weights, the tokenizer and the chat
    template from the one file: before, the tokenizer was looked up beside it and not found."""
    from tests.gguf_files import CHATML

    by_name = LocalGeneralist.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, device="cpu"
    )
    by_path = LocalSpecialist.from_pretrained(str(tiny_gguf), device="cpu")
    for lm in (by_name, by_path):
        assert lm.name.endswith("tiny-llama.F32.gguf")
        assert next(lm.model.parameters()).dtype == torch.float32  # dequantised
        assert lm.vocab_size == generalist.vocab_size
        assert lm.tokenizer.chat_template == CHATML
        for text in PROMPTS:
            ids = generalist.tokenizer.encode(text)
            assert lm.tokenizer.encode(text) == ids
            torch.testing.assert_close(full_forward(lm, ids), full_forward(generalist, ids))
        chat = lm.encode(PROMPT, chat=True)
        assert lm.tokenizer.decode(chat) == f"<|im_start|>user\n{PROMPT}<|im_end|>\n" + (
            "<|im_start|>assistant\n"
        )


def test_from_pretrained_and_serve_take_gguf_files(tiny_gguf, tiny_dir, monkeypatch):
    """`SpecSteerLLM.from_pretrained(..., generalist_gguf_file=)` and `specsteer serve
    --generalist-gguf-file` load the generalist from the file (its tokenizer differs from the
    folder specialist's by the chat template only: one vocabulary)."""
    import uvicorn

    from langchain_specsteer import SpecSteerLLM
    from langchain_specsteer.cli import main
    from tests.gguf_files import CHATML

    llm = SpecSteerLLM.from_pretrained(
        str(tiny_dir / "generalist"),
        str(tiny_gguf.parent),
        generalist_gguf_file=tiny_gguf.name,
        device="cpu",
        max_new_tokens=6,
    )
    assert llm.generalist.tokenizer.chat_template == CHATML
    assert llm.specialist.tokenizer.chat_template != CHATML
    assert llm.invoke(PROMPT, method="speculative") == llm.invoke(PROMPT, method="generalist")
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append(app))
    folder, name = str(tiny_gguf.parent), tiny_gguf.name
    serve = ["serve", "--device", "cpu", "--generalist", folder, "--generalist-gguf-file", name]
    assert main([*serve, "--public-specialist", folder, "--public-specialist-gguf-file", name]) == 0
    service = runs[0].state.service
    assert service.model_name == name
    assert service.generalist.tokenizer.chat_template == CHATML
    assert service.public_specialist.tokenizer.chat_template == CHATML


def test_a_gguf_file_without_the_gguf_package_names_the_extra(tiny_gguf, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "langchain-specsteer\[gguf\]"'):
        LocalGeneralist.from_pretrained(str(tiny_gguf), device="cpu")
