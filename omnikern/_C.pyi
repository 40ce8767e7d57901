# Type stub for the C++ extension omnikern._C (csrc/bindings.cpp). Kept honest by
# python_tests/test_c_stub.py: every public name here must exist in the module and vice versa.
# Text arguments take str (used as UTF-8) or bytes; a wrong type is a TypeError naming the argument.
# pool's arrays must be C-contiguous with native byte order (else a ValueError naming the argument);
# int8_topk and quantize_int8 copy other layouts of their float32/int8/int64 arrays.
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__version__: str

# Hashing
def string_id_hash32(strings: Iterable[str | bytes]) -> npt.NDArray[np.int64]: ...
def string_id_hash64(strings: Iterable[str | bytes]) -> npt.NDArray[np.int64]: ...
def leveldb_hash32(data: bytes, seed: int = 0xBC9F1D34) -> int: ...

# Unicode and WordPiece
UNICODE_VERSIONS: tuple[str, str]

def unicode_normalize(text: str | bytes, form: str, unicode_version: str = "17.0") -> str: ...
def unicode_lowercase(text: str | bytes) -> str: ...
def unicode_casefold(text: str | bytes) -> str: ...
def unicode_category(code_point: int, unicode_version: str = "17.0") -> str: ...

class WordPieceTokenizer:
    def __init__(
        self,
        vocab: Sequence[tuple[str, int]],
        *,
        clean_text: bool,
        handle_chinese_chars: bool,
        strip_accents: bool,
        lowercase: bool,
        unk_token: str,
        continuing_subword_prefix: str,
        max_input_chars_per_word: int,
        cls_token: str,
        sep_token: str,
        pad_token: str,
        special_tokens: Sequence[str],
        max_length: int,
        add_special_tokens: bool,
        pre_normalization: Sequence[str] = (),
    ) -> None: ...
    def encode(self, text: str | bytes) -> list[int]: ...
    def encode_batch(
        self, texts: Iterable[str | bytes], num_threads: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def normalize(self, text: str | bytes) -> str: ...
    def token_id(self, token: str) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def unk_id(self) -> int: ...
    @property
    def cls_id(self) -> int: ...
    @property
    def sep_id(self) -> int: ...

# Pooling
def pool(
    token_embeddings: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    attention_mask: npt.NDArray[np.generic],
    modes: Sequence[str],
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...

# Int8 scoring
def int8_topk(
    queries: npt.NDArray[np.float32],
    codes: npt.NDArray[np.int8],
    scales: npt.NDArray[np.float32] | None,
    dim: int,
    exclude: npt.NDArray[np.int64] | None,
    k: int,
    num_threads: int = 0,
    isa: str = "auto",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def quantize_int8(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def int8_best_isa() -> str: ...

# N-grams
def ngram_normalize(text: str | bytes) -> str: ...
def ngram_char_trigrams(text: str | bytes) -> list[str]: ...
def ngram_word_ngrams(text: str | bytes, n: int) -> list[str]: ...
def ngram_count(
    corpus: Iterable[str | bytes], caps: tuple[int, int, int], min_count: int, num_threads: int = 0
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]: ...

class NGramFeaturizer:
    def __init__(
        self, char_trigram_vocab: Sequence[str], unigram_vocab: Sequence[str], bigram_vocab: Sequence[str],
        oov_buckets: int,
    ) -> None: ...
    def featurize_batch(
        self, texts: Iterable[str | bytes], num_fields: int = 0, num_threads: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def featurize(self, text: str | bytes) -> npt.NDArray[np.int64]: ...
    def base(self, k: int) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def oov_buckets(self) -> int: ...
