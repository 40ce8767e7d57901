"""Writes csrc/unicode/tables_generated.{h,cc}: the Unicode tables of omnikern's C++ text code.

Run by a developer when the pinned data changes, never at install time (the output is committed):

    python csrc/unicode/gen_tables.py            # downloads the two pinned sdists with pip
    python csrc/unicode/gen_tables.py --sdist-dir DIR   # or reads unicodedata2-<v>.tar.gz from DIR

Data: the ``unicodedata2`` source distributions on PyPI, which carry CPython's generated UCD headers
(read by ``ucd_source.py``):

* Unicode 8.0.0 (``unicodedata2==8.0.0``): general category, canonical combining class and canonical
  decompositions. HF ``tokenizers`` (0.23) takes its categories (Cc/Cf/Co, P*, Mn) from Unicode 8.0
  and its NFD from a crate whose decompositions equal 8.0's for every code point (checked: all
  0x110000 code points agree with ``tokenizers.normalizers.NFD``). BERT WordPiece uses this set.
* Unicode 17.0.0 (``unicodedata2==17.0.1``): general category, combining class, canonical and
  compatibility decompositions, canonical compositions (exclusions applied), full lowercase and full
  case folding. HF lowercases with Rust's ``char::to_lowercase`` (Unicode 17): identical to this
  table for every code point. Everything that is not BERT-compatibility code (NFC/NFKC, casefold,
  the n-gram featuriser) uses this set.

White_Space is not generated: it is 25 code points, unchanged since Unicode 6.3 (see unicode.cc).

Layout: every per-code-point property is a two-stage table. ``stage1[cp >> 7]`` names a block of
128 entries in ``stage2`` (identical blocks are stored once), so a lookup is two loads. Mappings
(decompositions, case) store in stage2 an offset into a ``char32_t`` pool where
``pool[offset]`` is the length n and ``pool[offset + 1 .. n]`` the mapped code points; offset 0
means "maps to itself".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ucd_source import MAX_CP, UCD  # noqa: E402

PINNED = {"v8": "8.0.0", "v17": "17.0.1"}
SHIFT = 7
# General categories in a fixed order (the C++ enum follows it).
CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
              "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"]
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def fetch_sdists(directory: Path) -> dict[str, Path]:
    out = {}
    for key, version in PINNED.items():
        path = directory / f"unicodedata2-{version}.tar.gz"
        if not path.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            f"unicodedata2=={version}", "-d", str(directory)], check=True)
        out[key] = path
    return out


def two_stage(values: list[int]) -> tuple[list[int], list[int]]:
    """stage1[cp >> SHIFT] * 2^SHIFT indexes stage2; identical blocks are shared."""
    size = 1 << SHIFT
    blocks: dict[tuple, int] = {}
    stage1, stage2 = [], []
    for start in range(0, len(values), size):
        block = tuple(values[start : start + size])
        if block not in blocks:
            blocks[block] = len(blocks)
            stage2.extend(block)
        stage1.append(blocks[block])
    return stage1, stage2


def full_decomposition(ucd: UCD, cp: int, compat: bool) -> list[int]:
    """Recursive decomposition of one code point (not reordered); [cp] when it has none."""
    canonical, parts = ucd.decomposition(cp)
    if not parts or (not canonical and not compat):
        return [cp]
    out = []
    for part in parts:
        out.extend(full_decomposition(ucd, part, compat))
    return out


def mapping_table(mapping: dict[int, list[int]]) -> tuple[list[int], list[int], list[int]]:
    """(stage1, stage2 offsets, pool) for code point -> sequence; pool[0] is a dummy so 0 = none."""
    pool = [0]
    seen: dict[tuple, int] = {}
    offsets = [0] * MAX_CP
    for cp in sorted(mapping):
        seq = tuple(mapping[cp])
        if seq not in seen:
            seen[seq] = len(pool)
            pool.append(len(seq))
            pool.extend(seq)
        offsets[cp] = seen[seq]
    stage1, stage2 = two_stage(offsets)
    return stage1, stage2, pool


def c_array(ctype: str, name: str, values: list[int], per_line: int = 24) -> str:
    lines = [f"const {ctype} {name}[{len(values)}] = {{"]
    for i in range(0, len(values), per_line):
        lines.append("    " + ",".join(str(v) for v in values[i : i + per_line]) + ",")
    lines.append("};")
    return "\n".join(lines)


def smallest_type(values: list[int]) -> str:
    top = max(values)
    return "uint8_t" if top < 1 << 8 else "uint16_t" if top < 1 << 16 else "uint32_t"


def build(ucds: dict[str, UCD]) -> tuple[str, str]:
    decls: list[str] = []
    defs: list[str] = []

    def emit_two_stage(name: str, stage1: list[int], stage2: list[int]) -> None:
        t1, t2 = smallest_type(stage1), smallest_type(stage2)
        decls.append(f"extern const {t1} {name}_stage1[{len(stage1)}];")
        decls.append(f"extern const {t2} {name}_stage2[{len(stage2)}];")
        defs.append(c_array(t1, f"{name}_stage1", stage1))
        defs.append(c_array(t2, f"{name}_stage2", stage2))

    def emit_mapping(name: str, mapping: dict[int, list[int]]) -> None:
        stage1, stage2, pool = mapping_table(mapping)
        emit_two_stage(name, stage1, stage2)
        decls.append(f"extern const char32_t {name}_pool[{len(pool)}];")
        defs.append(c_array("char32_t", f"{name}_pool", pool))

    category_index = {name: i for i, name in enumerate(CATEGORIES)}
    cps = range(MAX_CP)
    for key, ucd in ucds.items():
        # props = category | combining class << 8
        props = []
        for cp in cps:
            cat = ucd.category(cp)
            if 0xD800 <= cp <= 0xDFFF:
                cat = "Cs"
            props.append(category_index[cat] | ucd.combining(cp) << 8)
        emit_two_stage(f"props_{key}", *two_stage(props))
        canon = {}
        for cp in cps:
            if HANGUL_FIRST <= cp <= HANGUL_LAST:
                continue  # algorithmic, see unicode.cc
            seq = full_decomposition(ucd, cp, compat=False)
            if seq != [cp]:
                canon[cp] = seq
        emit_mapping(f"canon_{key}", canon)
    v17 = ucds["v17"]
    compat = {}
    for cp in cps:
        if HANGUL_FIRST <= cp <= HANGUL_LAST:
            continue
        seq = full_decomposition(v17, cp, compat=True)
        if seq != [cp]:
            compat[cp] = seq
    emit_mapping("compat_v17", compat)
    lower = {cp: v17.lower_full(cp) for cp in cps if v17.lower_full(cp) != [cp]}
    emit_mapping("lower_v17", lower)
    fold = {cp: v17.casefold_full(cp) for cp in cps if v17.casefold_full(cp) != [cp]}
    emit_mapping("casefold_v17", fold)
    # Canonical compositions: sorted (first << 21 | second) keys for binary search.
    pairs = sorted(((a << 21) | b, c) for (a, b), c in v17.compositions().items()
                   if not (0x1100 <= a <= 0x11FF or HANGUL_FIRST <= a <= HANGUL_LAST))
    decls.append(f"extern const uint64_t compose_v17_keys[{len(pairs)}];")
    decls.append(f"extern const char32_t compose_v17_values[{len(pairs)}];")
    defs.append(c_array("uint64_t", "compose_v17_keys", [k for k, _ in pairs], per_line=8))
    defs.append(c_array("char32_t", "compose_v17_values", [v for _, v in pairs]))

    versions = ", ".join(f"{k} = Unicode {u.version}" for k, u in ucds.items())
    head = (f"// Generated by csrc/unicode/gen_tables.py from unicodedata2 sdists ({versions}). Do not edit.\n")
    enum = "enum class Category : uint8_t {\n  " + ", ".join(CATEGORIES) + "\n};"
    header = "\n".join([
        head + "#pragma once\n", "#include <cstdint>\n", "namespace omnikern::unicode {\n",
        "/// General category, in the order of the generated tables.", enum, "",
        "namespace tables {\n",
        f"inline constexpr int kShift = {SHIFT};",
        f'inline constexpr const char* kVersionV8 = "{ucds["v8"].version}";',
        f'inline constexpr const char* kVersionV17 = "{ucds["v17"].version}";',
        *decls, "\n}  // namespace tables", "}  // namespace omnikern::unicode", ""])
    source = "\n".join([head, '#include "unicode/tables_generated.h"\n',
                        "namespace omnikern::unicode::tables {\n", *defs,
                        "\n}  // namespace omnikern::unicode::tables", ""])
    return header, source


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist-dir", type=Path, help="folder holding unicodedata2-<version>.tar.gz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdists = fetch_sdists(args.sdist_dir or Path(tmp))
        ucds = {key: UCD(path) for key, path in sdists.items()}
    for key, ucd in ucds.items():
        expected = PINNED[key].rsplit(".", 1)[0]
        if not ucd.version.startswith(expected):
            raise SystemExit(f"{key}: expected Unicode {expected}, the sdist says {ucd.version}")
    header, source = build(ucds)
    here = Path(__file__).resolve().parent
    write_atomic(here / "tables_generated.h", header)
    write_atomic(here / "tables_generated.cc", source)
    print(f"wrote {here / 'tables_generated.h'} and tables_generated.cc ({len(source) // 1024} KiB)")


if __name__ == "__main__":
    main()
