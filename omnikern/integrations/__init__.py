"""Bridges to other training and serving libraries; each submodule imports its library, this package nothing.

``omnikern.integrations.sentence_transformers`` (extra ``omnikern[st]``): the fused loss as a
sentence-transformers loss, and query towers that load from and save to sentence-transformers
model directories (docs/sentence-transformers.md).
"""

__all__: list[str] = []
