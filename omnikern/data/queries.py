"""Deterministic query sets over the recipe catalogue, split by recipe.

No public query log fits the catalogue, so queries are built from the recipes themselves by fixed,
seeded rules. Everything here is a pure function of (catalogue, :class:`QueryConfig`): the same
inputs give the same queries in the same order on every machine (``random.Random`` seeded with
strings is stable across processes; nothing depends on ``PYTHONHASHSEED``).

Split (by recipe)
    The catalogue indices are shuffled by ``random.Random(f"{seed}:split")`` and the first
    ``round(eval_fraction · N)`` become the *eval recipes*, the rest the *train recipes*. Train
    queries only ever target train recipes and eval queries only eval recipes, so no evaluation
    target is ever a training positive. A query's relevant recipes that fall in the other split are
    listed in :attr:`Query.ignore`: evaluation drops them from the ranking ("filtered" ranking), so a
    model is neither rewarded nor punished for ranking a recipe it was trained on.

Words
    ``words(text)``: casefold, then maximal runs of letters/digits (inner ``'`` and ``-`` kept);
    *content words* drop the stopwords in :data:`STOPWORDS` and repeats (first occurrence kept).

Known-item queries (``kind="known_item"``)
    From each recipe's title content words ``w`` (``n = len(w)``): when ``n ≤ 2`` all of them, else
    ``k`` words with ``k`` uniform in ``[max(2, ⌈n/2⌉), n-1]`` (always partial); the chosen words are
    a uniformly random sample, in random order (shuffled). ``known_item_max_words`` (default None:
    no cap) caps ``k`` for harder, more ambiguous queries. Up to ``known_item_per_recipe`` distinct
    texts per train recipe and ``eval_known_item_per_recipe`` per eval recipe (``4×`` that many
    draws at most), from ``random.Random(f"{seed}:known_item:{key}")``. Relevant recipes: every
    recipe whose title content words include all the query's words (always the source recipe).

Category queries (``kind="category"``)
    The *topic* of a category: casefold; drop a leading ``"recipes for "`` / ``"recipes using "`` and
    a trailing ``" recipes"``; a topic that ends in ``s`` is merged into its singular form when that
    form is also a topic (``beverages`` → ``beverage``, ``pastries`` → ``pastry``). Topics with fewer
    than ``min_category_size`` recipes in the whole catalogue are dropped (this also drops the
    one-off non-categories such as a cooking time). Query text = the topic; relevant recipes = all
    recipes with that topic.

Ingredient queries (``kind="ingredient"``)
    The *name* of an ingredient line: casefold; delete parentheses and their content; keep the text
    before the first comma; split into words; drop words holding a digit or a vulgar fraction, the
    words in :data:`DESCRIPTORS`, and the words in :data:`UNITS` except as the last word (``"2 cloves
    garlic"`` → ``"garlic"``, ``"1 tsp whole cloves"`` → ``"clove"``); singularise each word (:func:`singular`);
    keep the last two words (the head noun phrase: ``"1 cup freshly grated Parmesan cheese"`` →
    ``"parmesan cheese"``). A name's document frequency ``df`` is the number of recipes listing it.
    For each recipe, the candidate names are its names with ``df ≤ ingredient_max_df · N`` (common
    staples such as salt or water say little about a recipe); when it has at least two, two are
    sampled (random order) by ``random.Random(f"{seed}:ingredient:{key}")``, ``ingredient_per_recipe``
    texts at most. Query text = the two names joined by a space; relevant recipes = recipes listing
    both names.

Merging and ids
    Within a split, queries with the same ``(kind, text)`` are one query. Query ids are
    ``string_id_hash(["query:" + text])``: equal texts share an id across kinds and splits, which is
    what the loss's query-id masking wants. Queries are sorted by ``(kind, text)``.

Query→query pairs
    Two queries of the same split that share a target recipe form a pair (the published
    "query → query click" task). For each target recipe in index order, the pairs among the queries
    targeting it are listed, ``random.Random(f"{seed}:pairs:{key}")`` keeps at most
    ``max_pairs_per_recipe`` of them, and duplicates across recipes are dropped. A pair is
    ``(i, j)`` with ``i < j`` indices into the split's query tuple, and the texts differ.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from omnikern._checks import check_int
from omnikern.data.recipes import Recipe
from omnikern.text.hashing import string_id_hash

KINDS = ("category", "ingredient", "known_item")

STOPWORDS = frozenset(
    "a an and the of with in on for to or from by at style "
    "à la le les de del della di au aux en y et und mit".split()
)

UNITS = frozenset(
    "cup cups c tablespoon tablespoons tbsp tbs tbsps tb teaspoon teaspoons tsp tsps t "
    "g gram grams gr kg kilogram kilograms mg ml millilitre millilitres milliliter milliliters "
    "l litre litres liter liters dl cl oz ounce ounces lb lbs pound pounds pinch pinches dash dashes "
    "quart quarts qt pint pints pt gallon gallons can cans tin tins jar jars package packages pkg "
    "packet packets bag bags box boxes bottle bottles carton cartons stick sticks slice slices "
    "piece pieces bunch bunches handful handfuls sprig sprigs head heads drop drops cube cubes "
    "inch inches cm mm x clove cloves".split()
)

DESCRIPTORS = frozenset(
    "fresh freshly large small medium big extra chopped finely coarsely roughly diced minced sliced "
    "thinly thickly grated shredded crushed peeled cored seeded pitted halved quartered cubed "
    "boneless skinless whole dried softened melted cold hot warm room temperature beaten lightly "
    "packed sifted optional to taste about approximately approx of plus more for or and a an the "
    "good quality ripe raw cooked uncooked frozen thawed canned drained rinsed level heaped heaping "
    "rounded scant generous some few several each additional".split()
)

_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_PARENS = re.compile(r"\([^)]*\)")
_HAS_NUMBER = re.compile(r"[\d\u00bc-\u00be\u2150-\u215f]")


def words(text: str) -> list[str]:
    """Returns the casefolded words of ``text`` (runs of letters/digits, inner ``'`` and ``-`` kept)."""
    return _WORD.findall(text.casefold())


def content_words(text: str) -> list[str]:
    """Returns :func:`words` without :data:`STOPWORDS` and without repeats, in first-seen order."""
    out: list[str] = []
    for word in words(text):
        if word not in STOPWORDS and word not in out:
            out.append(word)
    return out


def singular(word: str) -> str:
    """Returns a light English singular: ``ies``→``y``, ``oes``→``o``, ``ches/shes/xes/sses``→drop
    ``es``, else a final ``s`` is dropped unless the word ends in ``ss``, ``us`` or ``is`` or has
    at most three letters."""
    if len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("oes"):
        return word[:-2]
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")):
        return word
    return word[:-1]


def ingredient_name(line: str) -> str:
    """Returns the normalised name of one ingredient line by the module's rule ("" if none)."""
    text = _PARENS.sub(" ", line.casefold()).split(",", 1)[0]
    ws = words(text)
    kept = [
        singular(word)
        for i, word in enumerate(ws)
        if not _HAS_NUMBER.search(word) and word not in DESCRIPTORS and (word not in UNITS or i == len(ws) - 1)
    ]
    return " ".join(kept[-2:])


def category_topic(category: str) -> str:
    """Returns the topic of a category name before singular merging (``"Recipes for dessert"`` →
    ``"dessert"``, ``"Soup recipes"`` → ``"soup"``)."""
    topic = " ".join(words(category))
    for prefix in ("recipes for ", "recipes using "):
        if topic.startswith(prefix):
            topic = topic[len(prefix):]
    if topic.endswith(" recipes"):
        topic = topic[: -len(" recipes")]
    return topic


@dataclass(frozen=True)
class QueryConfig:
    """Options of :func:`build_query_sets`; the defaults are the documented query sets."""

    seed: int = 0
    eval_fraction: float = 0.2
    known_item_per_recipe: int = 2
    eval_known_item_per_recipe: int = 1
    known_item_max_words: int | None = None
    min_category_size: int = 5
    ingredient_per_recipe: int = 1
    ingredient_max_df: float = 0.05
    max_pairs_per_recipe: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        for name in ("known_item_per_recipe", "eval_known_item_per_recipe", "ingredient_per_recipe",
                     "max_pairs_per_recipe"):
            value = getattr(self, name)
            check_int(name, value, 0)
        check_int("known_item_max_words", self.known_item_max_words, none_ok=True)
        check_int("min_category_size", self.min_category_size, 1)
        if not 0.0 < self.ingredient_max_df <= 1.0:
            raise ValueError(f"ingredient_max_df must be in (0, 1], got {self.ingredient_max_df!r}")


@dataclass(frozen=True)
class Query:
    """One query of one split.

    Attributes:
        text: the query string.
        kind: ``"known_item"``, ``"category"`` or ``"ingredient"``.
        id: entity id ``string_id_hash(["query:" + text])[0]``.
        targets: sorted catalogue indices of the relevant recipes in this split (non-empty).
        ignore: sorted catalogue indices of the relevant recipes in the other split; evaluation
            removes them from the ranking.
    """

    text: str
    kind: str
    id: int
    targets: tuple[int, ...]
    ignore: tuple[int, ...] = ()


@dataclass(frozen=True)
class QuerySets:
    """Train and eval queries over one catalogue, split by recipe.

    Attributes:
        train_recipes / eval_recipes: sorted catalogue indices of each side (disjoint, covering).
        train / eval: the queries, sorted by ``(kind, text)``.
        train_pairs / eval_pairs: query→query pairs ``(i, j)``, indices into ``train`` / ``eval``.
        config: the options that built them.
    """

    train_recipes: tuple[int, ...]
    eval_recipes: tuple[int, ...]
    train: tuple[Query, ...]
    eval: tuple[Query, ...]
    train_pairs: tuple[tuple[int, int], ...]
    eval_pairs: tuple[tuple[int, int], ...]
    config: QueryConfig = field(default_factory=QueryConfig)

    def positives(self, split: str = "train") -> list[tuple[int, int]]:
        """Returns every (query index, recipe index) pair of ``split`` ("train" or "eval"), in order."""
        return [(i, r) for i, query in enumerate(self._split(split)) for r in query.targets]

    def of_kind(self, kind: str, split: str = "eval") -> list[Query]:
        """Returns the queries of one ``kind`` in ``split``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return [q for q in self._split(split) if q.kind == kind]

    def _split(self, split: str) -> tuple[Query, ...]:
        if split == "train":
            return self.train
        if split == "eval":
            return self.eval
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")

    def sizes(self) -> dict[str, int]:
        """Returns counts: recipes per side, queries per (split, kind), positives and pairs per split."""
        out = {"train_recipes": len(self.train_recipes), "eval_recipes": len(self.eval_recipes)}
        for split in ("train", "eval"):
            for kind in KINDS:
                out[f"{split}_{kind}"] = len(self.of_kind(kind, split))
            out[f"{split}_positives"] = len(self.positives(split))
        out["train_pairs"] = len(self.train_pairs)
        out["eval_pairs"] = len(self.eval_pairs)
        return out


def split_recipes(num_recipes: int, eval_fraction: float, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns (train, eval) sorted catalogue indices by the module's split rule."""
    order = list(range(num_recipes))
    random.Random(f"{seed}:split").shuffle(order)
    n_eval = round(eval_fraction * num_recipes)
    return tuple(sorted(order[n_eval:])), tuple(sorted(order[:n_eval]))


def _known_item_texts(title_words: list[str], count: int, rng: random.Random, max_words: int | None) -> list[str]:
    n = len(title_words)
    if n == 0 or count == 0:
        return []
    texts: list[str] = []
    for _ in range(4 * count):
        k = n if n <= 2 else rng.randint(max(2, math.ceil(n / 2)), n - 1)
        if max_words is not None:
            k = min(k, max_words)
        text = " ".join(rng.sample(title_words, k))
        if text not in texts:
            texts.append(text)
            if len(texts) == count:
                break
    return texts


def _category_topics(recipes: Sequence[Recipe], min_size: int) -> list[str | None]:
    raw = [category_topic(r.category) if r.category else None for r in recipes]
    present = {t for t in raw if t}
    merged: dict[str, str] = {}
    for topic in present:
        if topic.endswith("s"):
            for form in (topic[:-3] + "y" if topic.endswith("ies") else None, topic[:-2], topic[:-1]):
                if form and form in present:
                    merged[topic] = form
                    break
    topics = [merged.get(t, t) if t else None for t in raw]
    counts: dict[str, int] = defaultdict(int)
    for t in topics:
        if t:
            counts[t] += 1
    return [t if t and counts[t] >= min_size else None for t in topics]


def _query_pairs(queries: Sequence[Query], cap: int, recipes: Sequence[Recipe], seed: int) -> list[tuple[int, int]]:
    by_target: dict[int, list[int]] = defaultdict(list)
    for i, query in enumerate(queries):
        for r in query.targets:
            by_target[r].append(i)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    for r in sorted(by_target):
        members = by_target[r]
        candidates = [
            (a, b)
            for x, a in enumerate(members)
            for b in members[x + 1:]
            if queries[a].text != queries[b].text
        ]
        if len(candidates) > cap:
            candidates = sorted(random.Random(f"{seed}:pairs:{recipes[r].key}").sample(candidates, cap))
        for pair in candidates:
            if pair not in seen:
                seen.add(pair)
                out.append(pair)
    return out


def build_query_sets(recipes: Sequence[Recipe], config: QueryConfig | None = None) -> QuerySets:
    """Returns the train/eval query sets of ``recipes`` by the rules in the module docstring.

    Args:
        recipes: the catalogue (``load_recipes()``); indices into it identify recipes.
        config: options; default ``QueryConfig()``.

    Raises:
        ValueError: ``recipes`` has fewer than two recipes, or ``config`` is not a QueryConfig.
    """
    config = QueryConfig() if config is None else config
    if not isinstance(config, QueryConfig):
        raise ValueError(f"config must be a QueryConfig, got {type(config).__name__}")
    if len(recipes) < 2:
        raise ValueError(f"recipes must hold at least 2 recipes to split, got {len(recipes)}")
    seed = config.seed
    train_idx, eval_idx = split_recipes(len(recipes), config.eval_fraction, seed)
    is_eval = [False] * len(recipes)
    for r in eval_idx:
        is_eval[r] = True

    # Relevance indexes: title word -> recipes, topic -> recipes, ingredient name -> recipes.
    title_words = [content_words(r.title) for r in recipes]
    by_title_word: dict[str, set[int]] = defaultdict(set)
    for r, ws in enumerate(title_words):
        for w in ws:
            by_title_word[w].add(r)
    topics = _category_topics(recipes, config.min_category_size)
    names = [list(dict.fromkeys(n for n in map(ingredient_name, r.ingredients) if n)) for r in recipes]
    by_name: dict[str, set[int]] = defaultdict(set)
    for r, ns in enumerate(names):
        for n in ns:
            by_name[n].add(r)
    max_df = config.ingredient_max_df * len(recipes)

    # intents[(kind, text)] = all relevant recipes in the catalogue; sources = splits that generated it.
    intents: dict[tuple[str, str], set[int]] = {}
    generated: dict[bool, set[tuple[str, str]]] = {False: set(), True: set()}
    for r, recipe in enumerate(recipes):
        side = is_eval[r]
        count = config.eval_known_item_per_recipe if side else config.known_item_per_recipe
        rng = random.Random(f"{seed}:known_item:{recipe.key}")
        for text in _known_item_texts(title_words[r], count, rng, config.known_item_max_words):
            key = ("known_item", text)
            if key not in intents:
                intents[key] = set.intersection(*(by_title_word[w] for w in text.split()))
            generated[side].add(key)
        candidates = [n for n in names[r] if len(by_name[n]) <= max_df]
        if len(candidates) >= 2:
            rng = random.Random(f"{seed}:ingredient:{recipe.key}")
            for _ in range(config.ingredient_per_recipe):
                pick = rng.sample(candidates, 2)
                key = ("ingredient", " ".join(pick))
                intents.setdefault(key, by_name[pick[0]] & by_name[pick[1]])
                generated[side].add(key)
    by_topic: dict[str, set[int]] = defaultdict(set)
    for r, topic in enumerate(topics):
        if topic:
            by_topic[topic].add(r)
    for topic, members in by_topic.items():
        intents[("category", topic)] = members
        for side in (False, True):
            if any(is_eval[r] == side for r in members):
                generated[side].add(("category", topic))

    def make(side: bool) -> tuple[Query, ...]:
        keys = sorted(generated[side])
        ids = string_id_hash(["query:" + text for _, text in keys]) if keys else []
        out = []
        for (kind, text), qid in zip(keys, ids):
            relevant = intents[(kind, text)]
            out.append(
                Query(
                    text=text,
                    kind=kind,
                    id=int(qid),
                    targets=tuple(sorted(r for r in relevant if is_eval[r] == side)),
                    ignore=tuple(sorted(r for r in relevant if is_eval[r] != side)),
                )
            )
        assert all(q.targets for q in out), "every generated query has a target in its own split"
        return tuple(out)

    train, evals = make(False), make(True)
    return QuerySets(
        train_recipes=train_idx,
        eval_recipes=eval_idx,
        train=train,
        eval=evals,
        train_pairs=tuple(_query_pairs(train, config.max_pairs_per_recipe, recipes, seed)),
        eval_pairs=tuple(_query_pairs(evals, config.max_pairs_per_recipe, recipes, seed)),
        config=config,
    )
