"""Settings for the test session: the project's own, with a throwaway secret key.

The project refuses to start with DEBUG off and no DJANGO_SECRET_KEY; the processes the
tests start (scripts/stack.py) inherit this key through the environment.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-" + "k3y" * 20)

from faas_site.settings import *  # noqa: E402,F403
