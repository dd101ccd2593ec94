"""Websocket routes."""

websocket_urlpatterns = []
