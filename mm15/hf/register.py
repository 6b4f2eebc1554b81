"""mm15's classes in transformers' Auto classes, without remote code, at no cost to ``import mm15``.

transformers has no lazy registration for classes defined outside it: ``AutoConfig.register``,
``AutoModelForImageTextToText.register`` and ``AutoProcessor.register`` take the classes, and
defining them imports torch and transformers' modeling code (seconds; docs/transformers.md has
the measurements).  So ``import mm15`` (``mm15/__init__.py`` calls :func:`register_lazily`)
imports nothing of transformers.  Each mm15 module registers its class when it is defined (its
last lines), and it is imported right after the transformers module it extends, through
Python's documented import hook (a ``sys.meta_path`` finder whose loader runs the module, then
imports ours; no transformers object is patched):

* ``transformers.models.auto.configuration_auto`` → :mod:`mm15.hf.configuration`
  (``AutoConfig.register("mm15", MM15Config)``)
* ``transformers.models.auto.modeling_auto`` → :mod:`mm15.hf.modeling`
  (``AutoModelForImageTextToText.register(MM15Config, MM15ForConditionalGeneration)``)
* ``transformers.models.auto.processing_auto`` → :mod:`mm15.hf.processing`
  (``AutoProcessor.register(MM15Config, MM15Processor)``)

A transformers module already imported registers ours at once.  Registration is idempotent
(``exist_ok``); one that fails (a broken install) warns instead of breaking the user's import.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import ModuleType

# transformers module → the mm15 module whose class extends it (and registers on import).
REGISTRATIONS: dict[str, str] = {
    "transformers.models.auto.configuration_auto": "mm15.hf.configuration",
    "transformers.models.auto.modeling_auto": "mm15.hf.modeling",
    "transformers.models.auto.processing_auto": "mm15.hf.processing",
}


def register() -> None:
    """Register everything now (imports transformers and torch)."""
    for module in REGISTRATIONS.values():
        importlib.import_module(module)


def register_lazily() -> None:
    """Register with each transformers Auto module as it is imported (at once if it is)."""
    for name, module in REGISTRATIONS.items():
        if name in sys.modules:
            _run(module)
        else:
            _FINDER.pending[name] = module
    if _FINDER.pending and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _run(module: str) -> None:
    """Import ``module`` (it registers itself).  When the transformers import that triggered
    this came from ``module`` itself, that one is half-imported and registers as it finishes."""
    try:
        importlib.import_module(module)
    except Exception as e:  # never break the import that triggered us
        warnings.warn(f"mm15 could not register {module} with transformers: {e}", stacklevel=2)


class _ThenRegister:
    """A module's own loader (the ``importlib.abc.Loader`` protocol), then the registration;
    everything else is the original's.  (No ``importlib.abc`` base: importing it costs ~20 ms.)"""

    def __init__(self, loader, module: str):
        self._loader = loader
        self._module = module

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run(self._module)

    def __getattr__(self, name: str):  # get_source, is_package, resource readers, ...
        return getattr(self._loader, name)


class _AfterImport:
    """A ``sys.meta_path`` finder (the ``importlib.abc.MetaPathFinder`` protocol): finds a
    pending module with the finders after it and wraps its loader (one shot each)."""

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}

    def find_spec(self, name, path, target=None) -> ModuleSpec | None:
        module = self.pending.pop(name, None)
        if module is None:
            return None
        for finder in [f for f in sys.meta_path if f is not self]:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenRegister(spec.loader, module)
                return spec
        return None


_FINDER = _AfterImport()
