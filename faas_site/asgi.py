"""ASGI entry point: HTTP and the dashboard websocket in one process (daphne)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "faas_site.settings")
# Initialise Django (apps, settings) before importing anything that touches models,
# such as the consumers imported by the routing module.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from functions import startup  # noqa: E402
from functions.routing import websocket_urlpatterns  # noqa: E402

startup.check_web_process(settings)

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
