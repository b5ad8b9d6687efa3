"""The module paths of the flat layout (before the packages by stage), kept importable with a DeprecationWarning.

`import itd.scan` or `from itd.models import load_model` still work: the old name is the new module itself (the
same object, so a monkeypatch through either name patches both). `MOVED` maps each old path to the new one; an
old path is removed from it one release after its move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    "itd.data": "itd.core",
    "itd.data.sample": "itd.core.sample",
    "itd.data.formats": "itd.core.formats",
    "itd.data.read": "itd.core.load",
    "itd.data.write": "itd.core.write",
    "itd.text": "itd.core.text",
    "itd.numbers": "itd.core.numbers",
    "itd.render": "itd.core.render",
    "itd.io": "itd.core.io",
    "itd.paths": "itd.core.paths",
    "itd.errors": "itd.core.errors",
    "itd.registry": "itd.core.registry",
    "itd.validate": "itd.core.validate",
    "itd.progress": "itd.core.progress",
    "itd.stats": "itd.core.stats",
    "itd.processes": "itd.core.processes",
    "itd.layouts": "itd.corpus.layouts",
    "itd.engines": "itd.corpus.engines",
    "itd.scan": "itd.corpus.scan",
    "itd.index": "itd.corpus.index",
    "itd.report": "itd.corpus.report",
    "itd.matches": "itd.corpus.matches",
    "itd.clean": "itd.corpus.clean",
    "itd.models": "itd.probes.models",
    "itd.codec": "itd.probes.codec",
    "itd.parallel": "itd.probes.parallel",
    "itd.detection": "itd.probes.detection",
    "itd.rewriting": "itd.rewriters.loop",
    "itd.assure": "itd.rewriters.assure",
    "itd.html_report": "itd.pipeline.html_report",
    "itd.export": "itd.pipeline.export",
    "itd.demo": "itd.pipeline.demo",
    "itd.terminal": "itd.cli.terminal",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the new module (the same object), warning once per import."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}  # by old path, while it is being imported

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__  # importlib sets __spec__ to the alias's; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    """Make the old module paths importable (once per process; `import itd` calls it)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finder, which would load a second copy of a submodule
