"""The recipe catalogue, query construction and synthetic batches (issue: model and trainer)."""

from omnikern.data.recipes import CatalogueNotInstalledError, Recipe, load_recipes

__all__ = ["CatalogueNotInstalledError", "Recipe", "load_recipes"]
