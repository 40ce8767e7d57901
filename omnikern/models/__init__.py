"""OmniSearchSage towers, the multi-tower container and the trainer (issue: model and trainer)."""

__all__: list[str] = []
