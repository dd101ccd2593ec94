"""A user's Django project that runs its @task functions on the FaaS platform (issue 16, item 7).
It knows nothing of the platform's app: only django_tasks and the backend's OPTIONS."""

import os

SECRET_KEY = "a client project"
INSTALLED_APPS = ["django_tasks"]
USE_TZ = True
TASKS = {"default": {"BACKEND": "functions.tasks_backend.FaaSTaskBackend",
                     "OPTIONS": {"URL": os.environ["FAAS_URL"], "TOKEN": os.environ.get("FAAS_TOKEN")}}}
