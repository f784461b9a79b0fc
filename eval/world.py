"""A synthetic, personalised product-review corpus ("the world") in the LongLaMP schema.

    rows = generate_world(seed=0, users=2000)        # {"train": [...], "val": [...], "test": [...]}
    write_world("data/world", seed=0, users=2000)     # {split}.jsonl + README.txt
    user_style(0, "U0001")                            # what the specialist should pick up
    python -m eval.world --out data/world [--seed 0] [--users 2000]

The world is small enough for a ~1M-parameter specialist and a ~15M-parameter generalist to
learn on a CPU (a vocabulary of about a thousand words), and personalisation in it is real:

- **Content** comes from the public input. A product is a brand, a model code, a category and
  one or two of the category's features; the review names the category and every feature of
  the description, its adjectives and verdict follow the rating (1-2 negative, 3 mixed, 4-5
  positive), and the summary is drawn from the sentiment's templates.
- **Style** comes from the user alone, drawn once per user from the seed and shown in every
  review they write: an opener, a sign-off per sentiment, an adjective palette, an intensifier,
  a catchphrase used in some reviews, a structure (verdict first or features first), a
  minimum number of body sentences and an exclamation habit.
- What varies per review (the product, the rating, which adjective of the palette, the
  sentence templates, how long ago it was bought) is noise that neither model can predict.

**Assistant episodes** (`generate_assistant`, written to `assistant/{split}.jsonl`) teach the
pair to call tools, in the same user split: a request for a review "in my style" calls
`recall_memory` with the product as query, then writes the user's review from the result (the
user's past reviews, which only the specialist reads); "remember ..." calls `save_memory`;
generic tools (weather, timers, currency, numbered functions with made-up names) have argument
schemas and answer from their result, so the format is not tied to the memory tools.

Users are split by user (80/10/10 %): in train every review of a user is one example (the
user's other reviews are its profile); in val and test each user gives one example, their last
review, so held-out evaluation covers many distinct users. Everything is a pure function of the
seed: string-seeded `random.Random` instances, never the global RNG nor set ordering.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from eval.cli import HelpFormatter

__all__ = [
    "ASPECTS",
    "BRANDS",
    "CATCHPHRASES",
    "CATEGORIES",
    "INTENSIFIERS",
    "OPENERS",
    "PALETTES",
    "PURPOSES",
    "SENTIMENTS",
    "SIGNOFFS",
    "SUMMARIES",
    "TOOLS",
    "assistant_messages",
    "assistant_tools",
    "generate_assistant",
    "generate_world",
    "main",
    "review_words",
    "sentiment",
    "user_style",
    "vocabulary",
    "words",
    "write_world",
]

SENTIMENTS = ("negative", "mixed", "positive")

# What people buy each category for (the review says so).
PURPOSES = {
    "blender": "for smoothies",
    "kettle": "for tea",
    "tent": "for camping trips",
    "headset": "for my commute",
    "backpack": "for hiking",
    "toaster": "for breakfast",
    "drill": "for home repairs",
    "speaker": "for parties",
    "monitor": "for work",
    "keyboard": "for gaming",
    "vacuum": "for the whole house",
    "lamp": "for reading",
    "skillet": "for dinners",
    "watch": "for running",
    "camera": "for travel photos",
    "mattress": "for better sleep",
    "jacket": "for winter walks",
    "router": "for streaming",
    "grill": "for weekend cookouts",
    "stroller": "for daily walks",
}
# Each category's features, separated by ";". A feature is "a/an <noun>" (singular), "<noun>"
# (a mass noun, singular) or "<noun>+" (plural: "are", "feel").
_FEATURES = {
    "blender": "a 1200 W motor; a glass jar; six speed settings+; steel blades+; a pulse button",
    "kettle": "a 1.7 L capacity; an auto shutoff; a keep warm mode; a glass body; a dial",
    "tent": "a waterproof fly; two doors+; aluminum poles+; a mesh roof; a gear loft",
    "headset": "noise cancelling; a 30 hour battery; foam cushions+; a folding frame; a mic",
    "backpack": "a laptop sleeve; a rain cover; side pockets+; a chest strap; a 30 L capacity",
    "toaster": "four wide slots+; a bagel setting; a crumb tray; a defrost button; a steel body",
    "drill": "a brushless motor; two batteries+; an LED light; a 13 mm chuck; a belt clip",
    "speaker": "a 20 hour battery; a waterproof shell; deep bass; a carry strap; a USB C port",
    "monitor": "a 27 inch screen; a 144 Hz panel; an adjustable stand; a matte panel; thin bezels+",
    "keyboard": "mechanical switches+; RGB lighting; a wrist rest; a compact layout; a USB C cable",
    "vacuum": "a HEPA filter; a 60 minute battery; a pet hair brush; a bagless bin; a wall mount",
    "lamp": "a dimmer switch; warm white light; a flexible arm; a weighted base; a USB port",
    "skillet": "a cast iron body; a nonstick coating; a helper handle; a glass lid; two spouts+",
    "watch": "a heart rate sensor; GPS tracking; a 7 day battery; a sleep tracker; a band",
    "camera": "a 24 MP sensor; a flip screen; image stabilization; a zoom lens; WiFi transfer",
    "mattress": "memory foam layers+; a cooling cover; pocket springs+; edge support; a zip cover",
    "jacket": "a fleece lining; a waterproof shell; zip pockets+; a detachable hood; taped seams+",
    "router": "WiFi 6 support; four antennas+; a gigabit port; parental controls+; mesh support",
    "grill": "a cast iron grate; a lid thermometer; side shelves+; a grease tray; three burners+",
    "stroller": "a one hand fold; a large basket; a reclining seat; big wheels+; a sun canopy",
}
# category -> (purpose, features)
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    category: (PURPOSES[category], tuple(part.strip() for part in features.split(";")))
    for category, features in _FEATURES.items()
}

BRANDS = (
    "Vantor", "Kelmo", "Brisko", "Nuvio", "Orbex", "Zentra", "Pavlo", "Quorix",
    "Lumet", "Stravo", "Tavik", "Myrel", "Corvel", "Elkor", "Dunmar",
)  # fmt: skip
MODEL_LETTERS = ("X", "Q", "Z", "R", "V", "T", "K")
MODEL_NUMBERS = (100, 200, 300, 400, 500, 600, 700, 800, 900)
CATALOG_SIZE = 400
RATING_WEIGHTS = {1: 10, 2: 10, 3: 20, 4: 30, 5: 30}
REVIEWS_PER_USER = (6, 12)

# Adjective palettes: disjoint from each other and from every other word a review uses.
PALETTES: dict[str, dict[str, tuple[str, ...]]] = {
    "plain": {
        "positive": ("good", "nice", "solid", "reliable"),
        "mixed": ("average", "passable", "unexceptional"),
        "negative": ("bad", "poor", "weak", "flimsy"),
    },
    "glowing": {
        "positive": ("excellent", "superb", "outstanding", "wonderful"),
        "mixed": ("fair", "middling", "uneven"),
        "negative": ("awful", "terrible", "dreadful", "horrible"),
    },
    "slangy": {
        "positive": ("awesome", "epic", "sick", "dope"),
        "mixed": ("meh", "mid", "iffy"),
        "negative": ("trash", "garbage", "lame", "janky"),
    },
    "technical": {
        "positive": ("efficient", "precise", "robust", "sturdy"),
        "mixed": ("adequate", "serviceable", "acceptable"),
        "negative": ("faulty", "defective", "unreliable", "inefficient"),
    },
    "british": {
        "positive": ("brilliant", "lovely", "smashing", "ace"),
        "mixed": ("decent", "tolerable", "fine"),
        "negative": ("rubbish", "naff", "dodgy", "shabby"),
    },
    "dramatic": {
        "positive": ("stellar", "magnificent", "phenomenal", "spectacular"),
        "mixed": ("underwhelming", "lukewarm", "forgettable"),
        "negative": ("disastrous", "abysmal", "atrocious", "appalling"),
    },
    "practical": {
        "positive": ("handy", "useful", "dependable", "convenient"),
        "mixed": ("ordinary", "unremarkable", "modest"),
        "negative": ("useless", "clunky", "awkward", "annoying"),
    },
    "refined": {
        "positive": ("elegant", "exquisite", "impeccable", "delightful"),
        "mixed": ("mediocre", "inconsistent", "patchy"),
        "negative": ("shoddy", "dismal", "subpar", "lousy"),
    },
}

OPENERS = (
    "Honestly,", "Okay so", "Quick take:", "Well,", "So,", "Listen,", "Right,", "Frankly,",
    "In short,", "Here goes:", "My two cents:", "Real talk:", "Hey folks,", "Short version:",
    "Long story short,", "First off,", "Look,", "Hmm,", "Wow,", "Full review:", "Verdict time:",
    "Update:", "Straight up,", "In my view,", "For the record,", "Simply put,", "Bottom line:",
    "Hi all,", "Greetings,", "Yo,", "Heads up:", "Now then,", "Truthfully,", "Personally,",
    "To sum up,", "Listen up,", "Okay,", "Fun fact:", "Dear reader,", "Friends,",
)  # fmt: skip

SIGNOFFS: dict[str, tuple[str, ...]] = {
    "positive": (
        "Would buy again.", "Highly recommended.", "Two thumbs up.", "Happy customer here.",
        "Worth every penny.", "Buy it now.", "Glad I got it.", "Ten out of ten.", "A keeper.",
        "Money well spent.",
    ),
    "mixed": (
        "Your call.", "Could be better.", "Proceed with caution.", "Wait for a sale.",
        "It will do.", "Take it or leave it.", "Room to improve.", "Try before you buy.",
        "Not sold yet.", "Mixed bag overall.",
    ),
    "negative": (
        "Not for me.", "Returning it.", "Save your money.", "Never again.", "Steer clear.",
        "Buyer beware.", "Back it goes.", "Hard pass.", "Skip this one.", "What a letdown.",
    ),
    "any": ("Cheers!", "Thanks for reading.", "Hope this helps.", "Peace out.", "That is all."),
}  # fmt: skip

INTENSIFIERS = ("really", "super", "quite", "pretty", "very", "truly", "seriously", "rather")

CATCHPHRASES = (
    "No cap.", "For real.", "Mark my words.", "Trust me.", "Just saying.", "Believe me.",
    "Not gonna lie.", "You heard it here first.", "Take it from me.", "End of story.", "No joke.",
    "I kid you not.", "Hand on heart.", "Full stop.", "Facts.", "Go figure.", "As they say.",
    "Case closed.", "Who knew.", "Mind you.", "Enough said.", "Between us.", "Just my opinion.",
    "Make no mistake.", "Swear on it.",
)  # fmt: skip

SUMMARIES: dict[str, tuple[str, ...]] = {
    "positive": (
        "Great {c}",
        "Love this {c}",
        "Highly recommend this {c}",
        "Very happy with this {c}",
    ),
    "mixed": ("Mixed feelings about this {c}", "{c} with some flaws", "Middle of the road {c}"),
    "negative": ("Disappointing {c}", "Avoid this {c}", "Regret buying this {c}"),
}

ASPECTS = ("build quality", "price", "design", "size", "setup", "packaging")
PURCHASE_TIMES = ("a week", "two weeks", "a month", "two months", "three months", "a year")
STAR_WORDS = {1: "One star", 2: "Two stars", 3: "Three stars", 4: "Four stars", 5: "Five stars"}

# Body sentence templates: {f} a feature or aspect, {be}/{feel} agree with it, {a} an adjective.
BODY_TEMPLATES = ("The {f} {be} {a}.", "The {f} {feel} {a}.", "I found the {f} {a}.")
VERDICT_FIRST = "this {brand} {model} {c} is {i} {a}{mark} I bought it {when} ago {why}."
FEATURE_FIRST = "I bought this {brand} {model} {c} {when} ago {why}."
FEATURE_FIRST_VERDICT = "Overall this {c} is {i} {a}{mark}"
STARS = "{stars} from me{mark}"
INPUT_TEMPLATE = (
    'Generate the review text written by a reviewer who has given an overall rating of "{overall}" '
    'for a product with description "{description}". The summary of the review text is '
    '"{summary}".'
)

STRUCTURES = ("verdict_first", "feature_first")
CATCHPHRASE_RATES = (0.3, 0.5, 0.7)
EXCLAIM_RATE = 0.35
SPLIT_SHARES = {"val": 0.1, "test": 0.1}
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The corpus's notion of a word: lowercase runs of letters and digits."""
    return _WORD.findall(text.lower())


def review_words(text: str) -> int:
    """A review's length in words, as the length bounds count it (whitespace-separated)."""
    return len(text.split())


def sentiment(rating: int | float) -> str:
    """negative (1-2), mixed (3) or positive (4-5)."""
    rating = round(float(rating))
    if not 1 <= rating <= 5:
        msg = f"rating must be between 1 and 5, got {rating}"
        raise ValueError(msg)
    return "negative" if rating <= 2 else "mixed" if rating == 3 else "positive"


def user_style(seed: int, user_id: str) -> dict:
    """The persistent style of `user_id` in the world of `seed` (JSON-serialisable)."""
    rng = random.Random(f"{seed}:{user_id}")
    palette = rng.choice(sorted(PALETTES))
    return {
        "opener": rng.choice(OPENERS),
        "signoffs": {s: rng.choice(SIGNOFFS[s] + SIGNOFFS["any"]) for s in SENTIMENTS},
        "palette": palette,
        "adjectives": {s: list(PALETTES[palette][s]) for s in SENTIMENTS},
        "intensifier": rng.choice(INTENSIFIERS),
        "catchphrase": rng.choice(CATCHPHRASES),
        "catchphrase_rate": rng.choice(CATCHPHRASE_RATES),
        "structure": rng.choice(STRUCTURES),
        "body_length": rng.randint(1, 3),
        "exclaims": rng.random() < EXCLAIM_RATE,
    }


def generate_world(seed: int = 0, users: int = 2000) -> dict[str, list[dict]]:
    """The world's LongLaMP product_review rows: {"train": rows, "val": rows, "test": rows}."""
    if isinstance(users, bool) or not isinstance(users, int) or users < 3:
        msg = f"users must be an integer of at least 3 (one per split), got {users!r}"
        raise ValueError(msg)
    catalog = _catalog(seed)
    user_ids = _user_ids(users)
    world: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for split, ids in _split_users(seed, user_ids).items():
        for user_id in ids:
            reviews = _user_reviews(seed, user_id, catalog)
            targets = range(len(reviews)) if split == "train" else [len(reviews) - 1]
            world[split].extend(_row(user_id, reviews, target) for target in targets)
    random.Random(f"{seed}:train-order").shuffle(world["train"])
    return world


def write_world(folder: str | os.PathLike, seed: int = 0, users: int = 2000) -> dict[str, int]:
    """Write `{split}.jsonl` (UTF-8, one row a line), `assistant/{split}.jsonl` (the tool-calling
    episodes) and README.txt into `folder`; the review row counts."""
    world = generate_world(seed, users)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for split, rows in world.items():
        with (path / f"{split}.jsonl").open("w", encoding="utf-8", newline="\n") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
    (path / "README.txt").write_text(_readme(world, seed, users), encoding="utf-8")
    (path / "assistant").mkdir(exist_ok=True)
    for split, episodes in generate_assistant(seed, users).items():
        with (path / "assistant" / f"{split}.jsonl").open(
            "w", encoding="utf-8", newline="\n"
        ) as file:
            for episode in episodes:
                file.write(json.dumps(episode, ensure_ascii=False) + "\n")
    return {split: len(rows) for split, rows in world.items()}


def vocabulary(world: dict[str, list[dict]] | Iterable[dict]) -> set[str]:
    """The distinct words of every text in the rows (inputs, outputs and profiles)."""
    rows = _all_rows(world)
    found: set[str] = set()
    for row in rows:
        found.update(words(row["input"]))
        found.update(words(row["output"]))
        for entry in row["profile"]:
            for field in ("description", "reviewText", "summary"):
                found.update(words(entry[field]))
    return found


def _all_rows(world: dict[str, list[dict]] | Iterable[dict]) -> Iterable[dict]:
    if isinstance(world, dict):
        return [row for rows in world.values() for row in rows]
    return world


def _user_ids(users: int) -> list[str]:
    width = max(4, len(str(users)))
    return [f"U{number:0{width}d}" for number in range(1, users + 1)]


def _split_users(seed: int, user_ids: Sequence[str]) -> dict[str, list[str]]:
    """Disjoint user lists per split (80/10/10 %, at least one user in each), sorted by id."""
    shuffled = list(user_ids)
    random.Random(f"{seed}:split").shuffle(shuffled)
    sizes = {split: max(1, round(share * len(shuffled))) for split, share in SPLIT_SHARES.items()}
    val = shuffled[: sizes["val"]]
    test = shuffled[sizes["val"] : sizes["val"] + sizes["test"]]
    train = shuffled[sizes["val"] + sizes["test"] :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _catalog(seed: int) -> list[dict]:
    """The products on sale: distinct descriptions, each with its category and features."""
    rng = random.Random(f"{seed}:catalog")
    categories = list(CATEGORIES)
    products: list[dict] = []
    seen: set[str] = set()
    while len(products) < CATALOG_SIZE:
        category = rng.choice(categories)
        features = rng.sample(CATEGORIES[category][1], rng.randint(1, 2))
        product = {
            "brand": rng.choice(BRANDS),
            "model": f"{rng.choice(MODEL_LETTERS)}{rng.choice(MODEL_NUMBERS)}",
            "category": category,
            "features": features,
        }
        product["description"] = _description(product)
        if product["description"] not in seen:
            seen.add(product["description"])
            products.append(product)
    return products


def _description(product: dict) -> str:
    listed = " and ".join(_feature_parts(feature)[0] for feature in product["features"])
    return f"{product['brand']} {product['model']} {product['category']} with {listed}"


def _feature_parts(feature: str) -> tuple[str, str, bool]:
    """(as the description lists it, the bare noun phrase, plural?) of a feature entry."""
    plural = feature.endswith("+")
    listed = feature.rstrip("+")
    article, _, rest = listed.partition(" ")
    bare = rest if article in ("a", "an") else listed
    return listed, bare, plural


def _user_reviews(seed: int, user_id: str, catalog: Sequence[dict]) -> list[dict]:
    """The user's reviews in the order written: profile-entry dicts (description, overall, ...)."""
    style = user_style(seed, user_id)
    rng = random.Random(f"{seed}:{user_id}:reviews")
    count = rng.randint(*REVIEWS_PER_USER)
    ratings, weights = tuple(RATING_WEIGHTS), tuple(RATING_WEIGHTS.values())
    reviews = []
    for product in rng.sample(list(catalog), count):
        rating = rng.choices(ratings, weights)[0]
        mood = sentiment(rating)
        reviews.append(
            {
                "description": product["description"],
                "overall": float(rating),
                "reviewText": _review_text(rng, style, product, rating),
                "summary": _capitalised(rng.choice(SUMMARIES[mood]).format(c=product["category"])),
            }
        )
    return reviews


def _review_text(rng: random.Random, style: dict, product: dict, rating: int) -> str:
    """One review: content from the product and rating, style from the user."""
    mood = sentiment(rating)
    adjectives = style["adjectives"][mood]
    mark = "!" if style["exclaims"] else "."
    fields = {
        "brand": product["brand"],
        "model": product["model"],
        "c": product["category"],
        "i": style["intensifier"],
        "a": rng.choice(adjectives),
        "mark": mark,
        "when": rng.choice(PURCHASE_TIMES),
        "why": CATEGORIES[product["category"]][0],
    }
    subjects = [_feature_parts(feature)[1:] for feature in product["features"]]
    extra = max(0, style["body_length"] - len(subjects))
    subjects += [(aspect, False) for aspect in rng.sample(ASPECTS, extra)]
    body = [
        rng.choice(BODY_TEMPLATES).format(
            f=subject,
            be="are" if plural else "is",
            feel="feel" if plural else "feels",
            a=rng.choice(adjectives),
        )
        for subject, plural in subjects
    ]
    if style["structure"] == "verdict_first":
        sentences = [VERDICT_FIRST.format(**fields), *body]
    else:
        sentences = [FEATURE_FIRST.format(**fields), *body, FEATURE_FIRST_VERDICT.format(**fields)]
    if rng.random() < style["catchphrase_rate"]:
        sentences.append(style["catchphrase"])
    sentences.append(STARS.format(stars=STAR_WORDS[rating], mark=mark))
    sentences.append(style["signoffs"][mood])
    return " ".join([style["opener"], *sentences])


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _row(user_id: str, reviews: Sequence[dict], target: int) -> dict:
    """The LongLaMP row whose output is review `target`; the profile is every other review."""
    review = reviews[target]
    return {
        "input": INPUT_TEMPLATE.format(
            overall=review["overall"], description=review["description"], summary=review["summary"]
        ),
        "output": review["reviewText"],
        "profile": [dict(entry) for index, entry in enumerate(reviews) if index != target],
        "reviewerId": user_id,
    }


# Assistant episodes: tools as OpenAI-style schemas (what `bind_tools` renders).
def _tool(name: str, description: str, **properties: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {key: {"type": kind} for key, kind in properties.items()},
                "required": list(properties),
            },
        },
    }


TOOLS: dict[str, dict] = {
    tool["function"]["name"]: tool
    for tool in (
        _tool("recall_memory", "Search the user's private memory.", query="string"),
        _tool("save_memory", "Save a note to the user's private memory.", text="string"),
        _tool("get_weather", "The weather in a city.", city="string"),
        _tool("set_timer", "Start a timer.", minutes="integer"),
        _tool("convert_currency", "Convert dollars.", amount="integer", currency="string"),
    )
}
"""The tools the assistant episodes offer; numbered functions are made up per episode."""
ASSISTANT_KINDS = ("recall", "remember", "weather", "timer", "currency", "function")
RECALL_REQUESTS = (
    'Write my review of the "{description}" in my style. I rate it {overall} stars; '
    'the summary is "{summary}".',
    'Use my memory to write my review: "{description}", {overall} stars, summary "{summary}".',
)
REMEMBER_FACTS = (
    "I prefer {feature} on a {c}",
    "my budget for a {c} is {n} dollars",
    "I use my {c} {why}",
    "I want a {c} from {brand}",
)
REMEMBER_REQUESTS = ("Remember that {fact}.", "Please remember: {fact}.", "Note that {fact}.")
CITIES = ("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Dublin")
WEATHER = ("sunny", "rainy", "cloudy", "windy", "snowy")
CURRENCIES = {"EUR": 0.9, "GBP": 0.8, "JPY": 150.0, "CAD": 1.4}
FUNCTION_PARTS = (
    ("magic", "lucky", "secret", "quick", "prime", "cosmic", "tiny", "golden", "happy", "fuzzy"),
    ("function", "number", "score", "value", "factor", "count", "sum", "total", "code", "index"),
)
FUNCTION_ARGS = ("input", "x", "n", "value", "number", "a")
FUNCTION_REQUESTS = (
    "What is the value of {name}({n})? Use the tool.",
    "Call {name} with {arg} {n}.",
    "Use {name} on {n}.",
)
ASSISTANT_SHARE = 0.4  # train users with an assistant episode of each kind, on average


def generate_assistant(seed: int = 0, users: int = 2000) -> dict[str, list[dict]]:
    """Tool-calling episodes, split by user as `generate_world` splits the reviews.

    Each episode is JSON: `kind`, `user`, `tools` (names offered, the needed one among them),
    `request`, `call` ({"name", "arguments"}), `result` (None for `recall`, whose result is the
    user's retrieved past reviews: `query` and `profile` give them), `answer`.
    """
    catalog = _catalog(seed)
    episodes: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for split, ids in _split_users(seed, _user_ids(users)).items():
        for user_id in ids:
            rng = random.Random(f"{seed}:{user_id}:assistant")
            reviews = _user_reviews(seed, user_id, catalog)
            for kind in ASSISTANT_KINDS:
                if split == "train" and rng.random() >= ASSISTANT_SHARE:
                    continue
                episode = _episode(rng, kind, user_id, reviews, catalog)
                episode["tools"] = _offered(rng, episode["call"]["name"])
                episodes[split].append(episode)
    random.Random(f"{seed}:assistant-order").shuffle(episodes["train"])
    return episodes


def assistant_messages(episode: dict, result: str | None = None) -> list[dict]:
    """An episode as chat-template messages: request, tool call, tool result, answer.

    `result` replaces the episode's tool result (a `recall` episode needs it: the rendered
    retrieval, or the placeholder the generalist reads).
    """
    call = episode["call"]
    content = episode["result"] if result is None else result
    if content is None:
        msg = "a recall episode's result is its retrieval: pass `result`"
        raise ValueError(msg)
    return [
        {"role": "user", "content": episode["request"]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": call}],
        },
        {"role": "tool", "name": call["name"], "content": content},
        {"role": "assistant", "content": episode["answer"]},
    ]


def assistant_tools(episode: dict) -> list[dict]:
    """The tool schemas an episode offers (its made-up function's among them)."""
    made_up = episode.get("function")
    return [
        made_up if made_up and name == made_up["function"]["name"] else TOOLS[name]
        for name in episode["tools"]
    ]


def _offered(rng: random.Random, needed: str) -> list[str]:
    """The needed tool and some others, in a random order."""
    others = [name for name in TOOLS if name != needed]
    offered = [needed, *rng.sample(others, rng.randint(0, 3))]
    rng.shuffle(offered)
    return offered


def _episode(
    rng: random.Random, kind: str, user_id: str, reviews: Sequence[dict], catalog: Sequence[dict]
) -> dict:
    base = {"kind": kind, "user": user_id}
    if kind == "recall":
        target = rng.randrange(len(reviews))
        review = reviews[target]
        request = rng.choice(RECALL_REQUESTS).format(
            description=review["description"],
            overall=round(review["overall"]),
            summary=review["summary"],
        )
        profile = [dict(entry) for index, entry in enumerate(reviews) if index != target]
        call = {"name": "recall_memory", "arguments": {"query": review["description"]}}
        return {
            **base,
            "request": request,
            "call": call,
            "result": None,
            "query": review["description"],
            "profile": profile,
            "answer": review["reviewText"],
        }
    if kind == "remember":
        product = rng.choice(catalog)
        fact = rng.choice(REMEMBER_FACTS).format(
            feature=_feature_parts(rng.choice(product["features"]))[1],
            c=product["category"],
            n=rng.choice(MODEL_NUMBERS),
            why=CATEGORIES[product["category"]][0],
            brand=product["brand"],
        )
        text = _capitalised(fact) + "."
        return {
            **base,
            "request": rng.choice(REMEMBER_REQUESTS).format(fact=fact),
            "call": {"name": "save_memory", "arguments": {"text": text}},
            "result": "Saved.",
            "answer": "Got it, I will remember that.",
        }
    if kind == "weather":
        city, weather, degrees = rng.choice(CITIES), rng.choice(WEATHER), rng.randint(-5, 35)
        return {
            **base,
            "request": rng.choice(("What is the weather in {c}?", "Weather in {c} today?")).format(
                c=city
            ),
            "call": {"name": "get_weather", "arguments": {"city": city}},
            "result": f"{weather}, {degrees} C",
            "answer": f"It is {weather} and {degrees} C in {city}.",
        }
    if kind == "timer":
        minutes = rng.randint(1, 60)
        return {
            **base,
            "request": rng.choice(
                ("Set a timer for {n} minutes.", "Start a {n} minute timer.")
            ).format(n=minutes),
            "call": {"name": "set_timer", "arguments": {"minutes": minutes}},
            "result": f"Timer set for {minutes} minutes.",
            "answer": f"Your timer is set for {minutes} minutes.",
        }
    if kind == "currency":
        amount, currency = rng.randint(1, 500), rng.choice(sorted(CURRENCIES))
        value = round(amount * CURRENCIES[currency])
        return {
            **base,
            "request": f"How much is {amount} dollars in {currency}?",
            "call": {
                "name": "convert_currency",
                "arguments": {"amount": amount, "currency": currency},
            },
            "result": f"{value} {currency}",
            "answer": f"{amount} dollars is {value} {currency}.",
        }
    name = f"{rng.choice(FUNCTION_PARTS[0])}_{rng.choice(FUNCTION_PARTS[1])}"
    arg, number = rng.choice(FUNCTION_ARGS), rng.randint(0, 99)
    value = rng.randint(0, 999)
    return {
        **base,
        "request": rng.choice(FUNCTION_REQUESTS).format(name=name, arg=arg, n=number),
        "call": {"name": name, "arguments": {arg: number}},
        "function": _tool(name, "A numbered function.", **{arg: "integer"}),
        "result": str(value),
        "answer": f"The value is {value}.",
    }


def _readme(world: dict[str, list[dict]], seed: int, users: int) -> str:
    outputs = [row["output"] for rows in world.values() for row in rows]
    lengths = [review_words(text) for text in outputs]
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in world.items())
    return f"""SpecSteer synthetic product-review world (eval/world.py)

seed {seed}, {users} users; rows: {counts}
distinct words {len(vocabulary(world))}; review length {min(lengths)}-{max(lengths)} words,
mean {sum(lengths) / len(lengths):.1f}

LongLaMP product_review schema (load with eval.data.load_longlamp("product_review", "user",
split, this folder)): input, output (the review), profile (the user's other reviews:
description, overall, reviewText, summary), reviewerId.

Products: {len(CATEGORIES)} categories, {len(BRANDS)} brands, model codes such as X200, one or two
features per product from its category's list; {CATALOG_SIZE} products on sale.
Ratings 1-2 negative, 3 mixed, 4-5 positive; the summary follows the sentiment.

Content (predictable from the input): the review names the category and every feature of the
description; adjectives, verdict and stars follow the rating.
Style (only from the user's profile; persistent per user): opener ({len(OPENERS)} options),
sign-off per sentiment, adjective palette ({len(PALETTES)}), intensifier ({len(INTENSIFIERS)}),
catchphrase ({len(CATCHPHRASES)}) in some reviews, verdict-first or feature-first structure,
1-3 body sentences, exclamation habit.

Splits are by user (80/10/10 %). Train: every review of a user is one example, the other
reviews its profile (rows shuffled). Val/test: one example per user, the last review.
Regenerate: python -m eval.world --out FOLDER --seed {seed} --users {users}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.world",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder for {split}.jsonl and README.txt")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything generated")
    parser.add_argument(
        "--users", type=int, default=2000, help="how many users (80/10/10 %% train/val/test)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the world to --out and print its row counts and vocabulary size."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        counts = write_world(args.out, seed=args.seed, users=args.users)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    readme = (Path(args.out) / "README.txt").read_text(encoding="utf-8")
    print("\n".join(readme.splitlines()[3:5]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
