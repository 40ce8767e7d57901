"""Entity ids from strings: LevelDB's 32-bit hash (the published scheme) or a 64-bit variant."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from omnikern import _C


def string_id_hash(strings: Iterable[str | bytes], bits: int = 32) -> np.ndarray:
    """Returns int64 ids (N,) for ``strings``, 0 for the empty string.

    ``bits=32``: LevelDB's hash of the UTF-8 bytes, id ``1 + int32(h)`` (the published system's ids;
    collisions become likely past ~10^5 entities). ``bits=64``: MurmurHash64A, id ``1 + (h >> 1)``.
    Equals ``omnikern.text.reference.string_id_hash_ref``.

    Raises:
        TypeError: ``strings`` is a single str/bytes, or holds something else.
        ValueError: ``bits`` is not 32 or 64.
    """
    if isinstance(strings, (str, bytes)):
        raise TypeError("strings must be an iterable of str or bytes, not a single " + type(strings).__name__)
    if bits == 32:
        return _C.string_id_hash32(strings)
    if bits == 64:
        return _C.string_id_hash64(strings)
    raise ValueError(f"bits must be 32 or 64, got {bits!r}")
