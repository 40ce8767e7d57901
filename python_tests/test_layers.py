"""The package's layers import only downward, and the light entry points stay light.

Layers, lowest first (a module may import its own layer and any below it, never one above):

    0  omnikern._C, omnikern._atomic, omnikern._lazy, omnikern._checks   C++ and file I/O
    1  omnikern.ops, omnikern.text                                       kernels, C++ text
    2  omnikern.index, omnikern.parity                                   the int8 index
    3  omnikern.data                                                     data and its contract
    4  omnikern.models                                                   towers, loss, trainer
    5  omnikern.serve, omnikern.integrations                             Triton deployment, other libraries
    6  omnikern.recipe                                                   the recipe model end to end
    7  omnikern.cli, omnikern.demo, omnikern.__main__                    entry points

The package root (``omnikern/__init__.py``) names everything but imports nothing at import time
(PEP 562), so it is not in a layer. Imports inside functions count too: a lazy import that goes
up is still a dependency that goes up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import omnikern

PACKAGE = Path(omnikern.__file__).parent
LAYERS = [
    ("omnikern._C", "omnikern._atomic", "omnikern._lazy", "omnikern._checks"),
    ("omnikern.ops", "omnikern.text"),
    ("omnikern.index", "omnikern.parity", "omnikern.sharded_index", "omnikern.distributed"),
    ("omnikern.data",),
    ("omnikern.models",),
    ("omnikern.serve", "omnikern.integrations"),
    ("omnikern.recipe", "omnikern.catalogue"),
    ("omnikern.cli", "omnikern.demo", "omnikern.__main__"),
]


def layer_of(module: str) -> int | None:
    """The layer of a dotted ``omnikern...`` module name (None for the root package)."""
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, dotted module)`` for every omnikern import in ``tree``, relative ones resolved;
    ``from omnikern import x`` counts as importing ``omnikern.x``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            if base in ("omnikern", "omnikern.ops", "omnikern.serve", "omnikern.models", "omnikern.data", "omnikern.text"):
                # `from omnikern import _C` names a module; `from omnikern.serve import contract` too
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "omnikern" or name.startswith("omnikern.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        if own is None:
            continue  # the root: lazy names only (checked below)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in imported_modules(tree, module, path.name == "__init__.py"):
            level = layer_of(target)
            if level is None and target != "omnikern":
                # `from omnikern.ops import l2_normalize`: a name re-exported by a package of a layer
                level = layer_of(target.rpartition(".")[0])
            if target == "omnikern":
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports the package root "
                                f"(import the defining module instead)")
            elif level is not None and level > own:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({module}, layer {own}) imports "
                                f"{target} (layer {level})")
    return problems


def test_every_module_is_in_a_layer():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")} | {"omnikern._C"}
    unplaced = sorted(m for m in modules if m != "omnikern" and layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_imports_only_go_down():
    problems = upward_imports()
    assert not problems, "imports that go up a layer:\n" + "\n".join(problems)


def test_the_root_imports_nothing_eagerly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    eager = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(node) for node in eager] == ["from omnikern._lazy import lazy_exports"]


def test_the_layering_check_catches_an_upward_import(tmp_path):
    # The checker itself: an ops module importing the models must be reported.
    tree = ast.parse("def f():\n    from omnikern.models.loss import SampledSoftmaxLoss\n")
    (line, target), = imported_modules(tree, "omnikern.ops.fake", is_package=False)
    assert (line, target) == (2, "omnikern.models.loss")
    assert layer_of(target) > layer_of("omnikern.ops.fake")
    relative = ast.parse("from ..serve import steps\n")
    assert imported_modules(relative, "omnikern.models.fake", is_package=False) == [(1, "omnikern.serve.steps")]


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import omnikern", ("triton", "torch", "omnikern.models", "omnikern.ops.loss")),
        ("import omnikern.text", ("triton", "torch")),
        ("import omnikern.cli; omnikern.cli.build_parser()", ("triton", "torch", "omnikern.models")),
        ("import omnikern.serve.steps", ("triton", "torch", "omnikern.models")),
    ],
)
def test_light_entry_points_stay_light(statement, absent):
    loaded = _loaded_after(statement)
    assert not loaded & set(absent), f"{statement!r} loaded {sorted(loaded & set(absent))}"


def test_lazy_names_resolve_and_unknown_names_fail():
    for name in omnikern.__all__:
        assert getattr(omnikern, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        omnikern.nope  # noqa: B018
    assert "SampledSoftmaxLoss" in dir(omnikern)
