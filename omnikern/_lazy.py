"""Package attributes that are imported on first use (PEP 562), so that importing a package is cheap.

``import omnikern`` must not load torch's kernels, triton or the models: the CLI's ``--help``, the
C++ text functions and the serving stubs each need only a small part. A package lists its public
names and where each lives; the first access imports that module and caches the value on the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Returns ``(__getattr__, __dir__)`` for ``package`` whose public names load lazily.

    Args:
        package: the package's ``__name__``.
        exports: public name → ``"module"`` (the attribute of the same name in it) or
            ``"module:attribute"`` (another name there).
    """

    def __getattr__(name: str) -> object:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        setattr(sys.modules[package], name, value)  # later accesses skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
