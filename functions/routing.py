"""Websocket routes, served by faas_site.asgi behind session auth and origin validation."""

from django.urls import re_path

from functions.consumers import DashboardConsumer

websocket_urlpatterns = [
    re_path(r"^ws/dashboard/?$", DashboardConsumer.as_asgi()),
]
