"""Load a file under ``scripts/`` as a module, for tests of the scripts' functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """Execute ``path`` as module ``name`` (registered in ``sys.modules`` while it runs, since
    dataclasses look their module up while a class is built; removed again if it fails)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
