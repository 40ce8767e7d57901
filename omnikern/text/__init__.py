"""Text processing over the C++ extension ``omnikern._C``: hashing, tokenizers, featurisers, pooling."""

from omnikern.text.hashing import string_id_hash
from omnikern.text.ngram import NGramFeaturizer, NGramVocabs, build_ngram_vocabs
from omnikern.text.pooling import pool
from omnikern.text.wordpiece import WordPieceTokenizer

__all__ = ["string_id_hash", "pool", "WordPieceTokenizer", "NGramFeaturizer", "NGramVocabs", "build_ngram_vocabs"]
