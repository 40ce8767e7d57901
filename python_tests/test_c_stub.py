"""The checked-in stub omnikern/_C.pyi names exactly the public names of the built extension."""

from __future__ import annotations

import ast
from pathlib import Path

from omnikern import _C

STUB = Path(__file__).resolve().parents[1] / "omnikern" / "_C.pyi"


def _stub_names(body: list[ast.stmt]) -> set[str]:
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def _public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def test_stub_matches_module():
    tree = ast.parse(STUB.read_text())
    assert _stub_names(tree.body) == _public(_C)


def test_stub_classes_match():
    """Each class in the stub lists exactly the public attributes of the bound class."""
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            assert _stub_names(node.body) == _public(getattr(_C, node.name)), node.name
