"""The project is installed into its own virtualenv (`make` does `pip install -e .`), so the
README's client quickstart runs with `.venv/bin/python` from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_virtualenv_imports_the_project_from_another_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    found = subprocess.run([sys.executable, "-c", "import functions, functions.client, workers; "
                            "print(functions.__file__)"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve().is_relative_to(REPO.resolve())
