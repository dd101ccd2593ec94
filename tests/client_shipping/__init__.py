"""Source templates of a user's own modules, for proving that the client ships code by value.

`install_user_module` writes them to a temporary directory under unique names and imports
them in the test process only: workers, started from the repo root, cannot import them.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).resolve().parent


def install_user_module(directory: Path, monkeypatch):
    """Import a fresh copy of user_module (and the helpers module it imports) from `directory`."""
    suffix = uuid.uuid4().hex[:10]
    names = {"self": f"faas_user_module_{suffix}", "helpers": f"faas_user_helpers_{suffix}"}
    for template, name in (("user_module", names["self"]), ("helpers_module", names["helpers"])):
        text = Template((TEMPLATES / f"{template}.py.tmpl").read_text()).substitute(names)
        (directory / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(directory))
    for name in names.values():  # so that monkeypatch removes the modules again after the test
        monkeypatch.setitem(sys.modules, name, None)
        del sys.modules[name]
    return importlib.import_module(names["self"])


def main_script(directory: Path) -> Path:
    path = directory / "client_script.py"
    path.write_text((TEMPLATES / "main_script.py.tmpl").read_text())
    return path
