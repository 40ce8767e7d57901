"""Reads Unicode Character Database tables out of a pinned ``unicodedata2`` source distribution.

``unicodedata2`` (PyPI) backports CPython's ``unicodedata`` for each Unicode release; its sdist holds
the C headers CPython's ``makeunicodedata.py`` writes (``unicodedata_db.h``, ``unicodetype_db.h``).
Parsing those headers gives exact per-code-point data for a stated Unicode version without compiling
anything and without the raw UCD text files. Only used by ``gen_tables.py`` (never at install time).
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

MAX_CP = 0x110000

_ARRAY = re.compile(r"static\s+(?:const\s+)?[\w\s\*]+?\b(\w+)\s*\[\]\s*=\s*\{(.*?)\n\};", re.S)
_DEFINE = re.compile(r"#define\s+(\w+)\s+(\S+)")
_RECORD = re.compile(r"\{([^{}]*)\}")
_STRING = re.compile(r'"([^"]*)"|NULL')


def _parse_header(text: str) -> tuple[dict[str, list], dict[str, str]]:
    """Returns ({array name: list of ints / tuples / strings}, {macro: value})."""
    arrays: dict[str, list] = {}
    for name, body in _ARRAY.findall(text):
        if "(" in body or "." in body:
            continue  # records with floats or casts (3.2.0 change records): not needed
        if "{" in body:
            arrays[name] = [tuple(int(v, 0) for v in rec.split(",") if v.strip()) for rec in _RECORD.findall(body)]
        elif '"' in body:
            arrays[name] = [m.group(1) for m in _STRING.finditer(body) if m.group(0) != "NULL"]
        else:
            arrays[name] = [int(v, 0) for v in body.split(",") if v.strip()]
    return arrays, dict(_DEFINE.findall(text))


class UCD:
    """Per-code-point lookups over one ``unicodedata2`` sdist (``version`` as the header states it)."""

    def __init__(self, sdist: Path):
        with tarfile.open(sdist) as tar:
            texts = {}
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if base in ("unicodedata_db.h", "unicodetype_db.h") and "/unicodedata2/" in member.name:
                    texts[base] = tar.extractfile(member).read().decode("utf-8")
        self.db, db_defs = _parse_header(texts["unicodedata_db.h"])
        self.version = db_defs["UNIDATA_VERSION"].strip('"')
        self._shift = int(re.search(r"#define SHIFT (\d+)\nstatic[^\n]*index1", texts["unicodedata_db.h"]).group(1))
        self._decomp_shift = int(db_defs["DECOMP_SHIFT"])
        self._comp_shift = int(db_defs["COMP_SHIFT"])
        self._total_last = int(db_defs["TOTAL_LAST"])
        self.types, type_defs = _parse_header(texts["unicodetype_db.h"])
        self._type_shift = int(type_defs["SHIFT"])

    @staticmethod
    def _lookup(index1: list[int], index2: list[int], shift: int, cp: int) -> int:
        if cp >= MAX_CP:
            return 0
        block = index1[cp >> shift]
        return index2[(block << shift) + (cp & ((1 << shift) - 1))]

    def _db_record(self, cp: int) -> tuple:
        i = self._lookup(self.db["index1"], self.db["index2"], self._shift, cp)
        return self.db["_PyUnicode_Database_Records"][i]

    def category(self, cp: int) -> str:
        return self.db["_PyUnicode_CategoryNames"][self._db_record(cp)[0]]

    def combining(self, cp: int) -> int:
        return self._db_record(cp)[1]

    def decomposition(self, cp: int) -> tuple[bool, list[int]]:
        """One level of the decomposition mapping: (is_canonical, code points); [] when none.

        Hangul syllables are not in the table (they decompose algorithmically; see gen_tables.py).
        """
        i = self._lookup(self.db["decomp_index1"], self.db["decomp_index2"], self._decomp_shift, cp)
        data = self.db["decomp_data"]
        count, prefix = data[i] >> 8, data[i] & 255
        return prefix == 0, list(data[i + 1 : i + 1 + count])

    def compositions(self) -> dict[tuple[int, int], int]:
        """All canonical composition pairs (first, second) -> primary composite (exclusions applied)."""

        def expand(reindex):
            out = {}
            for start, count, index in reindex:
                if start == 0:
                    break  # the {0, 0, 0} sentinel that ends the list
                for k in range(count + 1):
                    out[start + k] = index + k
            return out

        firsts, lasts = expand(self.db["nfc_first"]), expand(self.db["nfc_last"])
        comp_index, comp_data, shift = self.db["comp_index"], self.db["comp_data"], self._comp_shift
        pairs = {}
        for a, f in firsts.items():
            for b, l in lasts.items():
                index = f * self._total_last + l
                c = comp_data[(comp_index[index >> shift] << shift) + (index & ((1 << shift) - 1))]
                if c:
                    pairs[(a, b)] = c
        return pairs

    def _type_record(self, cp: int) -> tuple:
        i = self._lookup(self.types["index1"], self.types["index2"], self._type_shift, cp)
        return self.types["_PyUnicode_TypeRecords"][i]

    def lower_full(self, cp: int) -> list[int]:
        """Full lowercase mapping (UnicodeData + unconditional SpecialCasing), context-free."""
        _upper, lower, _title, _dec, _dig, flags = self._type_record(cp)
        if flags & 0x4000:  # EXTENDED_CASE_MASK: offset/length into _PyUnicode_ExtendedCase
            ext = self.types["_PyUnicode_ExtendedCase"]
            i, n = lower & 0xFFFF, lower >> 24
            return list(ext[i : i + n])
        return [cp + lower]

    def casefold_full(self, cp: int) -> list[int]:
        """Full case folding (CaseFolding.txt statuses C + F)."""
        _upper, lower, _title, _dec, _dig, flags = self._type_record(cp)
        if flags & 0x4000 and (lower >> 20) & 7:
            ext = self.types["_PyUnicode_ExtendedCase"]
            i = (lower & 0xFFFF) + (lower >> 24)
            return list(ext[i : i + ((lower >> 20) & 7)])
        return self.lower_full(cp)
