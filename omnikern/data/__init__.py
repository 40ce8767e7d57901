"""Data: the recipe catalogue, query construction, the data contract, batches and synthetic data."""

from omnikern.data.queries import Query, QueryConfig, QuerySets, build_query_sets
from omnikern.data.recipes import CatalogueNotInstalledError, Recipe, load_recipes

__all__ = [
    "CatalogueNotInstalledError",
    "Query",
    "QueryConfig",
    "QuerySets",
    "Recipe",
    "build_query_sets",
    "load_recipes",
]
