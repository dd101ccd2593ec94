"""The API views' plumbing made cheap: orjson in and out, and JSON picked without parsing
the Accept header when the client asks for JSON or anything.

DRF's defaults parse every Accept header into media types and rank them, and encode with
the standard library's json: on a no-op submit those cost more than the task's Redis
write. The browsable API and `?format=` still work: any other Accept goes to DRF's own
negotiation, and an indented (browsable) rendering to DRF's own renderer.
"""

from __future__ import annotations

import orjson
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.fields import SkipField, empty, get_error_detail
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

from functions.parsers import MultiPartParser  # refuses an oversized multipart body before reading it

JSON_ACCEPTS = frozenset(("", "*/*", "application/json"))
_encoder = JSONEncoder()  # DRF's fallbacks for what orjson does not know (lazy strings, Decimal, ...)


class OrjsonRenderer(JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if self.get_indent(accepted_media_type, renderer_context or {}):
            return super().render(data, accepted_media_type, renderer_context)
        return orjson.dumps(data, default=_encoder.default, option=orjson.OPT_NON_STR_KEYS)


class OrjsonParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return orjson.loads(stream.read())
        except orjson.JSONDecodeError as exc:
            if "depth limit" in str(exc):  # orjson stops at 1024 levels: say it as the stdlib parser's guard does
                raise ParseError("JSON parse error - the document is nested too deeply.") from None
            raise ParseError(f"JSON parse error - {exc}") from None


class JSONFirstNegotiation(DefaultContentNegotiation):
    """JSON at once for `Accept: application/json`, `*/*` or none; DRF decides the rest."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if (not format_suffix and request.META.get("HTTP_ACCEPT", "") in JSON_ACCEPTS
                and "format=" not in request.META.get("QUERY_STRING", "")
                and isinstance(renderers[0], OrjsonRenderer)):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)


class LeanViewMixin:
    """For APIView subclasses: the parsers, renderers and negotiation above."""

    parser_classes = [OrjsonParser, FormParser, MultiPartParser]
    renderer_classes = [OrjsonRenderer, BrowsableAPIRenderer]
    content_negotiation_class = JSONFirstNegotiation


def validated(serializer_class, data) -> dict:
    """What `serializer_class(data=data)` validates to, or its ValidationError, without the
    deep copy of every field DRF makes per serializer instance. For serializers of plain
    fields only (no `validate*` hooks, no nested serializers): the class's own unbound
    field instances are used, which validation never changes, so threads can share them.
    Anything but a JSON object (a form post, a list) takes DRF's own path."""
    if type(data) is not dict:
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)
    values, errors = {}, {}
    for name, field in serializer_class._declared_fields.items():
        try:
            values[name] = field.run_validation(data.get(name, empty))
        except ValidationError as exc:
            errors[name] = exc.detail
        except DjangoValidationError as exc:
            errors[name] = get_error_detail(exc)
        except SkipField:
            pass
    if errors:
        raise ValidationError(errors)
    return values
