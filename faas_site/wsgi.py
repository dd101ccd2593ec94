"""WSGI entry point: serves the REST API under a WSGI server (gunicorn) for throughput."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "faas_site.settings")
application = get_wsgi_application()

from django.conf import settings  # noqa: E402

from functions import startup  # noqa: E402

startup.check_web_process(settings)
