"""The demo-pair trainer: prompts as at inference, public loading path, exact resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from eval.data import load_longlamp
from eval.prompts import retrieve_profile
from eval.train_pair import ModelSize, TrainConfig, build_sequences, train, train_tokenizer
from langchain_specsteer import LocalGeneralist, LocalSpecialist, SpecSteerLLM
from retrievers import task_templates

MICRO = {
    "vocab_size": 400,
    "specialist": ModelSize(32, 1, 2),
    "generalist": ModelSize(48, 2, 2),
    "batch_tokens": 1024,
    "warmup_steps": 2,
    "specialist_steps": 6,
    "generalist_steps": 4,
}


@pytest.fixture
def world(world_dir):
    return world_dir


def test_training_sequences_match_what_the_llm_feeds_at_inference(world, tiny_dir):
    examples = load_longlamp("product_review", "user", "train", world, limit=4)
    tokenizer = train_tokenizer([e.output for e in examples] + [e.input for e in examples], 400)
    rng = random.Random(0)
    sequences = build_sequences(examples, tokenizer, context=True, k=2, rng=rng, share=0.0)
    specialist = LocalSpecialist(
        LocalSpecialist.from_pretrained(str(tiny_dir / "specialist")).model, tokenizer
    )
    generalist = LocalGeneralist(
        LocalGeneralist.from_pretrained(str(tiny_dir / "generalist")).model, tokenizer
    )
    llm = SpecSteerLLM(
        specialist=specialist, generalist=generalist, **task_templates("product_review")
    )

    for example, (tokens, prompt_length) in zip(examples, sequences, strict=True):
        documents = retrieve_profile(example, "product_review", "bm25", 2)
        prompts = llm.render_prompts(example.input, documents)
        assert tokens[:prompt_length] == prompts.private
        assert tokens[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(tokens[prompt_length:-1]) == example.output
    public = build_sequences(examples, tokenizer, context=False, k=2, rng=rng)
    for example, (tokens, prompt_length) in zip(examples, public, strict=True):
        assert tokens[:prompt_length] == llm.render_prompts(example.input).public_generalist


@pytest.mark.parametrize("folder", ["", "export"])
def test_the_trained_pair_loads_like_a_hub_model_and_runs(micro_pair_dir, folder):
    out = micro_pair_dir / folder
    specialist = LocalSpecialist.from_pretrained(str(out / "specialist"), device="cpu")
    generalist = LocalGeneralist.from_pretrained(str(out / "generalist"), device="cpu")
    assert (
        specialist.tokenizer.chat_template
        and generalist.tokenizer.get_vocab() == specialist.tokenizer.get_vocab()
    )
    llm = SpecSteerLLM(specialist=specialist, generalist=generalist, max_new_tokens=5)
    info = llm.generate(["Generate the review text ..."]).generations[0][0].generation_info
    assert info["new_tokens"] >= 1


def test_an_interrupted_training_resumes_to_the_same_weights(world, tmp_path, monkeypatch):
    config = TrainConfig(**{**MICRO, "generalist_steps": 1})
    train(config, world, tmp_path / "whole", limit=20, progress=False)

    import eval.train_pair as trainer

    saved = trainer._save
    calls = {"n": 0}

    def killed_after_three_checkpoints(path, model, optimizer, state):
        saved(path, model, optimizer, state)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "CHECKPOINT_SECONDS", 0.0)  # checkpoint every step
    monkeypatch.setattr(trainer, "_save", killed_after_three_checkpoints)
    with pytest.raises(KeyboardInterrupt):
        train(config, world, tmp_path / "resumed", limit=20, progress=False)
    monkeypatch.setattr(trainer, "_save", saved)
    train(config, world, tmp_path / "resumed", limit=20, progress=False)
    for name in ("specialist", "generalist"):
        whole = LocalSpecialist.from_pretrained(str(tmp_path / "whole" / name)).model.state_dict()
        resumed = LocalSpecialist.from_pretrained(
            str(tmp_path / "resumed" / name)
        ).model.state_dict()
        assert whole.keys() == resumed.keys()
        for key in whole:
            assert torch.equal(whole[key], resumed[key]), key


def test_episode_sequences_match_what_chat_specsteer_feeds_at_inference(world, tiny_dir):
    """Each assistant turn's prompt is the specialist's (recall result) or the generalist's
    (placeholder) prompt for that conversation in ChatSpecSteer; the turn ends with EOS."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from eval.train_pair import (
        CHAT_TEMPLATE,
        build_episode_sequences,
        load_episodes,
        recall_result,
    )
    from eval.world import assistant_tools
    from langchain_specsteer import ChatSpecSteer

    episodes = load_episodes(world, "train")
    episodes = [next(e for e in episodes if e["kind"] == kind) for kind in ("recall", "weather")]
    tokenizer = train_tokenizer(["Write my review " * 3, '{"query": "x"}'], 400)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = LocalSpecialist.from_pretrained(str(tiny_dir / "specialist")).model
    chat = ChatSpecSteer(
        specialist=LocalSpecialist(model, tokenizer), generalist=LocalGeneralist(model, tokenizer)
    )
    assert chat.tool_family() == "specsteer"
    for private in (True, False):
        rng = random.Random(0)
        sequences = build_episode_sequences(episodes, tokenizer, private=private, k=2, rng=rng)
        assert len(sequences) == 2 * len(episodes)
        for episode, first, second in zip(episodes, sequences[::2], sequences[1::2], strict=True):
            call = {
                "name": episode["call"]["name"],
                "args": episode["call"]["arguments"],
                "id": "c",
            }
            result = recall_result(episode, 2) if episode["kind"] == "recall" else episode["result"]
            history = [HumanMessage(episode["request"])]
            then = [AIMessage("", tool_calls=[call]), ToolMessage(result, tool_call_id="c")]
            plan = chat.tool_plan(assistant_tools(episode))
            for (tokens, prompt_length), messages in ((first, history), (second, history + then)):
                prompts = chat._prompts(chat.render_messages(messages), "", plan=plan)
                expected = prompts.private if private else prompts.public_generalist
                assert tokens[:prompt_length] == expected
                assert tokens[-1] == tokenizer.eos_token_id
            answer = tokenizer.decode(second[0][second[1] : -1])
            assert answer == episode["answer"]
            assert tokenizer.decode(first[0][first[1] : -1]).startswith("<|call|>")
            if episode["kind"] == "recall":
                assert (result in tokenizer.decode(second[0])) is private


def test_review_examples_and_episodes_cap_the_training_data(world, tmp_path):
    config = TrainConfig(**{**MICRO, "generalist_steps": 1, "review_examples": 5, "episodes": 3})
    train(config, world, tmp_path / "capped", limit=20, progress=False, only="generalist")
    report = json.loads((tmp_path / "capped" / "training.json").read_text())
    assert (report["examples"], report["episodes"]) == (5, 3)
    assert report["generalist"]["steps"] == 1 and "specialist" not in report
    train(config, world, tmp_path / "limited", limit=2, progress=False, only="generalist")
    report = json.loads((tmp_path / "limited" / "training.json").read_text())
    assert (report["examples"], report["episodes"]) == (2, 2)  # --limit caps both


def test_the_tokenizer_makes_model_codes_one_token_and_numbers_one_token_a_digit(world):
    from eval.train_pair import PRE_TOKENIZER

    examples = load_longlamp("product_review", "user", "train", world)
    texts = [e.input for e in examples] + [e.output for e in examples]
    tokenizer = train_tokenizer([*texts, "Set a timer for 37 minutes. magic_score(37)"], 2048)
    assert "[A-Z][0-9]+" in PRE_TOKENIZER

    def pieces(text):
        return [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]

    code = next(
        word for word in examples[0].input.split() if word[:1].isupper() and word[1:].isdigit()
    )
    assert f" {code}" in pieces(examples[0].input)  # in the request, and in the review
    assert f" {code}" in pieces(examples[0].output)
    digits = ["3", "7"]
    for text, before, after in (
        ("Set a timer for 37 minutes.", [" for", " "], [" minutes"]),
        ("magic_score(37)", ["("], [")"]),
        ('{"minutes": 37}', [" "], ["}"]),
    ):
        split = pieces(text)
        start = split.index("3")
        assert split[start - len(before) : start] == before
        assert split[start : start + 2] == digits and split[start + 2 : start + 3] == after
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("<|call|>")) == ["<|call|>"]
    assert "<|call|>" in tokenizer.all_special_tokens


def test_grow_deepens_a_model_without_changing_what_it_computes(world):
    from eval.train_pair import _model, grow

    examples = load_longlamp("product_review", "user", "train", world, limit=4)
    tokenizer = train_tokenizer([e.output for e in examples], 400)
    shallow = _model(ModelSize(32, 2, 2), tokenizer, 0).eval()
    with torch.no_grad():  # a model whose every weight matters: no zero output projections
        for parameter in shallow.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    deep = grow(shallow, 6).eval()
    ids = torch.tensor([tokenizer.encode(examples[0].output)])
    assert deep.config.num_hidden_layers == 6 and len(deep.model.layers) == 6
    assert len(deep.config.layer_types) == 6
    with torch.no_grad():
        torch.testing.assert_close(deep(input_ids=ids).logits, shallow(input_ids=ids).logits)
    layers = deep.model.layers
    assert torch.equal(layers[1].self_attn.q_proj.weight, layers[0].self_attn.q_proj.weight)
    assert not layers[1].mlp.down_proj.weight.any() and layers[3].mlp.down_proj.weight.any()
    with pytest.raises(ValueError, match="multiple of 2"):
        grow(shallow, 5)


def test_a_grown_generalist_is_trained_at_both_depths_and_reported(world, tmp_path):
    config = TrainConfig(
        **{**MICRO, "generalist": ModelSize(48, 2, 2), "grow_from": 1, "seed_steps": 2}
    )
    train(config, world, tmp_path / "grown", limit=20, progress=False, only="generalist")
    report = json.loads((tmp_path / "grown" / "training.json").read_text())
    entry = report["generalist"]
    assert entry["grown_from"]["size"] == {"hidden": 48, "layers": 1, "heads": 2}
    assert entry["grown_from"]["steps"] == 2 and entry["steps"] == MICRO["generalist_steps"]
    assert entry["config"]["grow_from"] == 1
    assert (tmp_path / "grown" / "checkpoints" / "generalist-1-layers.pt").exists()
    generalist = LocalGeneralist.from_pretrained(str(tmp_path / "grown" / "generalist"))
    assert generalist.model.config.num_hidden_layers == 2
    # the specialist trained later into the same folder keeps the generalist's report
    train(config, world, tmp_path / "grown", limit=20, progress=False, only="specialist")
    report = json.loads((tmp_path / "grown" / "training.json").read_text())
    assert report["generalist"] == entry and report["specialist"]["size"]["layers"] == 1


def test_the_command_line_takes_both_sizes(capsys):
    from eval.train_pair import build_parser, main

    args = build_parser().parse_args(["--data", "d", "--out", "o", "--specialist-size", "64,3,2"])
    assert args.specialist_size == "64,3,2"
    with pytest.raises(SystemExit):
        main(["--data", "d", "--out", "o", "--specialist-size", "64,3"])
    assert "--specialist-size must be hidden,layers,heads" in capsys.readouterr().err
