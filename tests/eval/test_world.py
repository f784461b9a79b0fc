"""The synthetic review world: determinism, schema, user splits, style persistence, content."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from eval import world as w
from eval.data import SPLITS, load_longlamp
from eval.world import generate_world, user_style, vocabulary, words, write_world

USERS = 60
INPUT = re.compile(
    r"Generate the review text written by a reviewer who has given an overall rating of "
    r'"([1-5])\.0" for a product with description "([^"]+)"\. '
    r'The summary of the review text is "([^"]+)"\.'
)
DESCRIPTION = re.compile(r"(\w+) ([A-Z]\d+) (\w+) with (.+)")
ADJECTIVE_SENTIMENT = {
    adjective: mood
    for palette in w.PALETTES.values()
    for mood, adjectives in palette.items()
    for adjective in adjectives
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    counts = write_world(path, seed=0, users=USERS)
    assert counts == {split: len(rows) for split, rows in generate_world(0, USERS).items()}
    return path


@pytest.fixture(scope="module")
def world(folder):
    return {
        split: [json.loads(line) for line in (folder / f"{split}.jsonl").open(encoding="utf-8")]
        for split in SPLITS
    }


def all_rows(world):
    return [row for split in SPLITS for row in world[split]]


def reviews_by_user(world):
    """user -> {review text: (rating, description, summary)}, from targets and profiles alike."""
    found = defaultdict(dict)
    for row in all_rows(world):
        rating, description, summary = INPUT.fullmatch(row["input"]).groups()
        found[row["reviewerId"]][row["output"]] = (int(rating), description, summary)
        for entry in row["profile"]:
            review = (int(entry["overall"]), entry["description"], entry["summary"])
            found[row["reviewerId"]][entry["reviewText"]] = review
    return found


def test_same_seed_same_files_other_seed_other_world(tmp_path, folder):
    write_world(tmp_path / "again", seed=0, users=USERS)
    write_world(tmp_path / "other", seed=1, users=USERS)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "README.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes()
    for split in SPLITS:
        assert (tmp_path / "other" / f"{split}.jsonl").read_bytes() != (
            folder / f"{split}.jsonl"
        ).read_bytes()
    assert generate_world(0, USERS) == generate_world(0, USERS)
    assert generate_world(0, USERS) != generate_world(1, USERS)
    assert user_style(0, "U0001") == user_style(0, "U0001")
    styles = {json.dumps(user_style(seed, "U0001"), sort_keys=True) for seed in range(6)}
    assert len(styles) > 1


def test_rows_load_with_the_longlamp_loader(folder, world):
    for split in SPLITS:
        examples = load_longlamp("product_review", "user", split, folder)
        assert len(examples) == len(world[split]) > 0
        for example, row in zip(examples, world[split], strict=True):
            assert INPUT.fullmatch(example.input), example.input
            assert example.output == row["output"] and example.user == row["reviewerId"]
            assert len(example.profile) >= w.REVIEWS_PER_USER[0] - 1
            for entry in example.profile:
                assert set(entry) == {"description", "overall", "reviewText", "summary"}
                assert isinstance(entry["overall"], float) and entry["overall"] in (1, 2, 3, 4, 5)


def test_splits_are_disjoint_by_user(world):
    users = {split: [row["reviewerId"] for row in world[split]] for split in SPLITS}
    train, val, test = (set(users[split]) for split in SPLITS)
    assert not train & val and not train & test and not val & test
    assert train | val | test == {f"U{n:04d}" for n in range(1, USERS + 1)}
    assert len(val) == len(test) == round(0.1 * USERS) and len(train) == USERS - len(val) - len(
        test
    )
    assert len(users["val"]) == len(val) and len(users["test"]) == len(test)  # one row per user
    per_user = defaultdict(list)
    for row in world["train"]:
        per_user[row["reviewerId"]].append(row)
    for rows in per_user.values():  # every review of a train user is one example
        assert all(len(row["profile"]) == len(rows) - 1 for row in rows)
        assert len({row["output"] for row in rows}) == len(rows)


def test_profile_holds_all_other_reviews_never_the_target(world):
    reviews = reviews_by_user(world)
    for row in all_rows(world):
        texts = [entry["reviewText"] for entry in row["profile"]]
        assert row["output"] not in texts
        assert len(set(texts)) == len(texts)
        assert set(texts) | {row["output"]} == set(reviews[row["reviewerId"]])


def test_each_user_writes_in_a_persistent_style(world):
    reviews = reviews_by_user(world)
    for user, texts in reviews.items():
        style = user_style(0, user)
        palette = w.PALETTES[style["palette"]]
        assert style["adjectives"] == {mood: list(palette[mood]) for mood in w.SENTIMENTS}
        for text, (rating, _, _) in texts.items():
            mood = w.sentiment(rating)
            assert text.startswith(style["opener"] + " "), (user, text)
            assert text.endswith(" " + style["signoffs"][mood]), (user, text)
            assert f" {style['intensifier']} " in text
            used = [word for word in words(text) if word in ADJECTIVE_SENTIMENT]
            assert used and set(used) <= set(palette[mood]), (user, text)
            for phrase in w.CATCHPHRASES:
                assert phrase == style["catchphrase"] or f" {phrase} " not in text
            marks = text.removesuffix("Cheers!").count("!")  # the verdict and the stars
            assert marks == (2 if style["exclaims"] else 0), (user, text)
    # styles are personal, not one house style
    assert len({user_style(0, user)["opener"] for user in reviews}) >= 15
    assert len({user_style(0, user)["palette"] for user in reviews}) == len(w.PALETTES)


def test_review_names_the_category_and_every_feature_of_the_description(world):
    for texts in reviews_by_user(world).values():
        for text, (_, description, _) in texts.items():
            brand, model, category, listed = DESCRIPTION.fullmatch(description).groups()
            assert f"{brand} {model} {category}" in text
            assert category in w.CATEGORIES and w.PURPOSES[category] in text
            features = listed.split(" and ")
            assert 1 <= len(features) <= 2
            for feature in features:
                known = {f.rstrip("+") for f in w.CATEGORIES[category][1]}
                assert feature in known, (category, feature)
                bare = re.sub(r"^(a|an) ", "", feature)
                assert f"the {bare.lower()} " in text.lower(), (feature, text)


def test_sentiment_words_summary_and_stars_agree_with_the_rating(world):
    moods = set()
    for texts in reviews_by_user(world).values():
        for text, (rating, description, summary) in texts.items():
            mood = w.sentiment(rating)
            moods.add(mood)
            used = {
                ADJECTIVE_SENTIMENT[word] for word in words(text) if word in ADJECTIVE_SENTIMENT
            }
            assert used == {mood}, (rating, text)
            category = DESCRIPTION.fullmatch(description).group(3)
            summaries = {w._capitalised(t.format(c=category)) for t in w.SUMMARIES[mood]}
            assert summary in summaries
            assert f"{w.STAR_WORDS[rating]} from me" in text
    assert moods == set(w.SENTIMENTS)
    assert [w.sentiment(r) for r in (1, 2, 3, 4, 5)] == ["negative"] * 2 + ["mixed"] + [
        "positive"
    ] * 2


def test_palette_adjectives_appear_nowhere_else():
    """What makes the sentiment and palette checks meaningful: adjectives are unambiguous."""
    adjectives = [a for p in w.PALETTES.values() for mood in p.values() for a in mood]
    assert len(adjectives) == len(set(adjectives))
    assert all(len(words(a)) == 1 for a in adjectives)
    assert not set(adjectives) & template_words(include_palettes=False)


def template_words(*, include_palettes=True):
    """Every word any world can use, from its building blocks (so the bound holds at any size)."""
    pieces = [
        *w.OPENERS,
        *(s for group in w.SIGNOFFS.values() for s in group),
        *w.CATCHPHRASES,
        *w.INTENSIFIERS,
        *w.BRANDS,
        *(f"{letter}{number}" for letter in w.MODEL_LETTERS for number in w.MODEL_NUMBERS),
        *(f"{c} {purpose} {' '.join(f)}" for c, (purpose, f) in w.CATEGORIES.items()),
        *w.ASPECTS,
        *w.PURCHASE_TIMES,
        *w.STAR_WORDS.values(),
        *(s for group in w.SUMMARIES.values() for s in group),
        *w.BODY_TEMPLATES,
        w.VERDICT_FIRST,
        w.FEATURE_FIRST,
        w.FEATURE_FIRST_VERDICT,
        w.STARS,
        w.INPUT_TEMPLATE,
        "1.0 2.0 3.0 4.0 5.0 is are feels feel with and",  # ratings, verbs, descriptions
    ]
    if include_palettes:
        pieces += [a for p in w.PALETTES.values() for mood in p.values() for a in mood]
    found = set()
    for piece in pieces:
        found.update(words(re.sub(r"\{\w*\}", " ", piece)))
    return found


def test_vocabulary_is_small(world):
    used = vocabulary(world)
    assert used <= template_words()
    assert len(template_words()) <= 1500
    assert 200 < len(used) <= 1500


def test_reviews_are_25_to_60_words(world):
    lengths = [w.review_words(text) for texts in reviews_by_user(world).values() for text in texts]
    assert min(lengths) >= 25 and max(lengths) <= 60
    assert 30 <= sum(lengths) / len(lengths) <= 50


def test_cli_writes_the_world(tmp_path, capsys):
    assert w.main(["--out", str(tmp_path / "cli"), "--users", "12", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "cli" / "README.txt").read_text(encoding="utf-8").startswith("SpecSteer")
    for split, rows in generate_world(3, 12).items():
        lines = (tmp_path / "cli" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows


def test_too_few_users_is_an_error():
    with pytest.raises(ValueError, match="users"):
        generate_world(0, 2)


def test_assistant_episodes_are_split_by_user_and_call_offered_tools(folder):
    episodes = {
        split: [json.loads(line) for line in (folder / "assistant" / f"{split}.jsonl").open()]
        for split in SPLITS
    }
    assert episodes == w.generate_assistant(0, USERS)  # written as generated, deterministic
    assert all(episodes.values())
    users = {split: {e["user"] for e in rows} for split, rows in episodes.items()}
    reviews = generate_world(0, USERS)
    review_users = {split: {r["reviewerId"] for r in rows} for split, rows in reviews.items()}
    assert users["val"] == review_users["val"] and users["test"] == review_users["test"]
    assert users["train"] <= review_users["train"]
    kinds = {e["kind"] for rows in episodes.values() for e in rows}
    assert kinds == set(w.ASSISTANT_KINDS)
    for episode in (e for rows in episodes.values() for e in rows):
        tools = w.assistant_tools(episode)
        names = [t["function"]["name"] for t in tools]
        assert episode["call"]["name"] in names and len(set(names)) == len(names)
        schema = tools[names.index(episode["call"]["name"])]["function"]["parameters"]
        assert set(episode["call"]["arguments"]) == set(schema["properties"])  # fits its schema
        messages = w.assistant_messages(episode, "RESULT")
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        if episode["kind"] == "recall":  # answered in the user's style: one of their reviews
            assert episode["result"] is None and episode["answer"] not in {
                p["reviewText"] for p in episode["profile"]
            }
            style = user_style(0, episode["user"])
            assert episode["answer"].startswith(style["opener"])
            assert episode["call"]["arguments"] == {"query": episode["query"]}
        else:
            assert episode["result"] and messages[2]["content"] == "RESULT"
    with pytest.raises(ValueError, match="recall episode's result is its retrieval"):
        w.assistant_messages(next(e for e in episodes["val"] if e["kind"] == "recall"))
