"""The API's access rule: authenticated users, or anyone when anonymous use is switched on."""

from django.conf import settings
from rest_framework.permissions import BasePermission


class IsAuthenticatedOrAnonymousAllowed(BasePermission):
    message = "Authentication credentials were not provided or are invalid."

    def has_permission(self, request, view) -> bool:
        return bool(settings.FAAS_ALLOW_ANONYMOUS or (request.user and request.user.is_authenticated))
