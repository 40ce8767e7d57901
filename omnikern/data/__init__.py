"""The recipe catalogue, query construction and synthetic batches (issue: model and trainer)."""

__all__: list[str] = []
