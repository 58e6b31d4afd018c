"""Module paths of spadecam 0.1 that moved into the benchmark harness (:mod:`spadecam.bench`),
importable for one more release with a DeprecationWarning: ``spadecam.reproduce``,
``spadecam.evaluation`` and ``spadecam.figures``. Importing one gives a module that forwards
every name to its new home (and 0.1's names of the benchmark recipes and data to theirs); it
holds no code of its own. Installed by ``import spadecam``; they go in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "install"]

#: Old module -> (new module, {old name: "new.module:new_name"} for names that moved apart).
MOVED_MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "spadecam.reproduce": ("spadecam.bench.reproduce", {
        "run_elpv": "spadecam.bench.elpv:run_elpv",
        "ELPV_ABLATIONS": "spadecam.bench.elpv:ELPV_ABLATIONS",
        "Recipe": "spadecam.bench.configs:BenchmarkConfig",
        "RECIPES": "spadecam.bench.configs:NOISY_MNIST_BENCHMARKS",
        "ELPV_RECIPES": "spadecam.bench.configs:ELPV_BENCHMARKS",
        "get_recipe": "spadecam.bench.configs:noisy_mnist_benchmark",
        **{n: f"spadecam.bench.protocols:{n}" for n in (
            "NORMAL_DIGIT", "TEST_SEED", "ELPV_SPLIT", "ELPV_COLUMNS", "MNIST_VAL_START",
            "VAL_SEED", "elpv_data", "elpv_dir", "noisy_mnist_val_data")},
    }),
    "spadecam.evaluation": ("spadecam.bench.tables", {"auroc": "spadecam.metrics:auroc"}),
    "spadecam.figures": ("spadecam.bench.figures", {}),
}


class _Forward(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a plain module, filled by exec_module

    def exec_module(self, module: ModuleType) -> None:
        new, renamed = MOVED_MODULES[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new} (the benchmark harness); the old "
                      "path goes in 0.3", DeprecationWarning, stacklevel=2)

        def forward(name: str) -> Any:
            where, _, attr = renamed.get(name, f"{new}:{name}").partition(":")
            try:
                return getattr(importlib.import_module(where), attr)
            except AttributeError:
                raise AttributeError(f"module {module.__name__!r} has no attribute "
                                     f"{name!r}") from None

        setattr(module, "__getattr__", forward)  # noqa: B010 (PEP 562, on a module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _Forward())


def install() -> None:
    """Put the finder of the moved module paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
