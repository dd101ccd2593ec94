"""API errors: a 413 for oversized payloads, and JSON bodies for every error, never HTML."""

import logging

import redis
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.views import exception_handler as drf_exception_handler

from functions import services

log = logging.getLogger(__name__)


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The payload is larger than this server accepts."
    default_code = "payload_too_large"


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is unavailable right now. Retry shortly."
    default_code = "service_unavailable"


def exception_handler(exc, context):
    """DRF's handler, plus the domain errors services raise and Django's size guard."""
    if isinstance(exc, services.NotFound):
        exc = NotFound(str(exc))
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge("The request body is larger than this server accepts.")
    elif isinstance(exc, redis.RedisError):  # nothing was queued
        log.warning("Redis unavailable: %s", exc)
        exc = ServiceUnavailable("The task store is unavailable right now; nothing was changed. Retry shortly.")
    elif isinstance(exc, OperationalError):  # e.g. the database is locked or down; queued work was abandoned
        log.warning("database unavailable: %s", exc)
        exc = ServiceUnavailable("The database is unavailable right now; nothing was queued. Retry shortly.")
    return drf_exception_handler(exc, context)


def json_not_found(request, exception=None):
    return JsonResponse({"detail": f"No such endpoint: {request.path}."}, status=404)


def json_server_error(request):
    return JsonResponse({"detail": "Internal server error."}, status=500)


def json_bad_request(request, exception=None):
    return JsonResponse({"detail": "Bad request."}, status=400)
