"""Request body parsers: DRF's, with every malformed shape a 4xx instead of an escaped exception.

DRF's JSON parser maps ValueError only, so a body nested deeper than Python's recursion
limit (`"[" * 50000`) escaped as RecursionError: a 500. Its multipart parser streams file
parts to temporary files whatever their size (Django caps only the in-memory fields), and
no endpoint here takes files, so an oversized multipart body is refused before it is read.
"""

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from functions.errors import PayloadTooLarge


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request is not None and limit is not None and _content_length(request.META) > limit:
            raise PayloadTooLarge("The request body is larger than this server accepts.")
        return super().parse(stream, media_type, parser_context)


def _content_length(meta) -> int:
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
