"""Text processing over the C++ extension ``omnikern._C``: hashing, tokenizers, featurisers, pooling."""

from omnikern.text.hashing import string_id_hash
from omnikern.text.pooling import pool

__all__ = ["string_id_hash", "pool"]
