"""Argument checks shared by every layer, so that one bad value gets one kind of message everywhere."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None, none_ok: bool = False) -> int | None:
    """Returns ``value`` when it is an int (not a bool) in ``[minimum, maximum]`` (or None with
    ``none_ok``).

    Raises:
        ValueError: otherwise, naming the argument: ``"k must be an int >= 1, got 0"``.
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bounds}{' or None' if none_ok else ''}, got {value!r}")
    return value
