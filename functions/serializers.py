"""Input and output shapes of the REST API; payload rules live in workers.serialization."""

import uuid

from django.conf import settings
from django.core.validators import URLValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from functions.errors import PayloadTooLarge
from workers import serialization
from workers.exceptions import PayloadError
from workers.exceptions import PayloadTooLarge as PayloadTooLargeError


class PayloadField(serializers.CharField):
    """base64 of one dill pickle stream; becomes the raw bytes, checked but never unpickled."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("help_text", "base64 of dill.dumps(...); newlines are allowed")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        try:
            return serialization.validate_payload(text, settings.FAAS_MAX_PAYLOAD_BYTES)
        except PayloadTooLargeError as exc:
            raise PayloadTooLarge(str(exc)) from None
        except PayloadError as exc:
            raise serializers.ValidationError(str(exc)) from None


@extend_schema_field(OpenApiTypes.UUID)
class IdField(serializers.Field):
    """A task or function id: a UUID string (no CharField validators: ids come by the thousand)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(f"{data!r} is not a valid id.")
        try:
            return uuid.UUID(data)
        except ValueError:
            raise serializers.ValidationError(f"{data!r} is not a valid id.") from None

    def to_representation(self, value):
        return str(value)


def webhook_field(help_text: str) -> serializers.URLField:
    return serializers.URLField(required=False, allow_null=True, max_length=2000, help_text=help_text,
                                validators=[URLValidator(schemes=["http", "https"])])


class LimitsMixin(serializers.Serializer):
    """Resource limits set in the worker's process before the call (issue 16)."""

    memory_mb = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1024 * 1024,
                                         help_text="memory the call may allocate, MiB; past it the task FAILS")
    cpu_seconds = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=7 * 24 * 3600,
                                           help_text="CPU seconds the call may use; past it the task FAILS")


class RegisterFunctionSerializer(LimitsMixin, serializers.Serializer):
    name = serializers.CharField(max_length=200)
    payload = PayloadField()
    webhook_url = webhook_field("gets a signed POST whenever a task of this function finishes")
    python = serializers.CharField(required=False, max_length=30, help_text="the client's Python version")
    dill = serializers.CharField(required=False, max_length=30, help_text="the client's dill version")


class FunctionIdSerializer(serializers.Serializer):
    function_id = serializers.UUIDField()
    name = serializers.CharField()
    version = serializers.IntegerField(help_text="run a pinned version as name@version")
    new_version = serializers.BooleanField(help_text="false when these bytes were already this name's version")


class FunctionVersionSerializer(serializers.Serializer):
    function_id = serializers.UUIDField()
    name = serializers.CharField()
    version = serializers.IntegerField()
    digest = serializers.CharField(help_text="sha256 of the payload")
    payload_size = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    tasks = serializers.IntegerField(help_text="tasks this version ran")


class FunctionReferenceMixin(serializers.Serializer):
    """A call names its function by id, or by name (the latest version) or name@N (pinned)."""

    function_id = IdField(required=False)
    function = serializers.CharField(required=False, max_length=220, help_text="name or name@version, "
                                     "instead of function_id")

    def validate(self, attrs):
        return super().validate(check_function_reference(attrs))


IDEMPOTENCY_HELP = ("the same key from the same user within FAAS_IDEMPOTENCY_TTL answers the task it first "
                    "queued (or the Idempotency-Key header)")


class ExecuteFunctionSerializer(FunctionReferenceMixin, LimitsMixin, serializers.Serializer):
    payload = PayloadField(help_text="base64 of dill.dumps(((args...), {kwargs}))")
    timeout = serializers.FloatField(required=False, min_value=0.001, allow_null=True,
                                     help_text="deadline in seconds (optional)")
    idempotency_key = serializers.CharField(required=False, allow_null=True, max_length=255,
                                            help_text=IDEMPOTENCY_HELP)
    webhook_url = webhook_field("gets a signed POST with the final state (instead of the function's)")


class ExecuteBatchSerializer(FunctionReferenceMixin, LimitsMixin, serializers.Serializer):
    payloads = serializers.ListField(child=PayloadField(), min_length=1, max_length=10_000)
    timeout = serializers.FloatField(required=False, min_value=0.001, allow_null=True)
    idempotency_key = serializers.CharField(required=False, allow_null=True, max_length=200,
                                            help_text="call i gets the key '<key>:<i>' (or the Idempotency-Key header)")
    idempotency_keys = serializers.ListField(child=serializers.CharField(max_length=255), required=False,
                                             help_text="one key per payload, in order")
    webhook_url = webhook_field("gets a signed POST per task with its final state")

    def validate(self, attrs):
        return super().validate(check_batch(attrs))


def check_function_reference(attrs: dict) -> dict:
    """A call names its function one way (the lean views run this after `validated`)."""
    if ("function_id" in attrs) == ("function" in attrs):
        raise serializers.ValidationError({"function_id": "Name the function by function_id or by function "
                                           "(name or name@version): one of the two."})
    return attrs


def check_batch(attrs: dict) -> dict:
    keys = attrs.get("idempotency_keys")
    if keys is not None and len(keys) != len(attrs["payloads"]):
        raise serializers.ValidationError({"idempotency_keys": "Give one key per payload, in the same order."})
    return check_function_reference(attrs)


class TaskIdSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()


class TaskIdsSerializer(serializers.Serializer):
    task_ids = serializers.ListField(child=serializers.UUIDField())


class StatusSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["QUEUED", "RUNNING", "COMPLETED", "FAILED"])


class ResultSerializer(StatusSerializer):
    result = serializers.CharField(allow_null=True, help_text="serialize(value) or serialize(exception); null before")
    error = serializers.CharField(required=False, help_text="plain-text reason, when FAILED")


class ExecutedSerializer(TaskIdSerializer):
    status = serializers.ChoiceField(choices=["QUEUED", "RUNNING", "COMPLETED", "FAILED"], required=False,
                                     help_text="with ?wait= only")
    result = serializers.CharField(allow_null=True, required=False, help_text="with ?wait= only, as in /result")
    error = serializers.CharField(required=False, help_text="with ?wait=, when FAILED")


MAX_RESULTS_IDS = 10_000  # task ids one POST /results may ask about


class ResultsRequestSerializer(serializers.Serializer):
    task_ids = serializers.ListField(child=IdField(), min_length=1, max_length=MAX_RESULTS_IDS)
    wait = serializers.FloatField(required=False, default=0.0, min_value=0.0, max_value=60.0,
                                  help_text="seconds to wait for final states (0 to 60)")
    min = serializers.IntegerField(required=False, default=1, min_value=1,
                                   help_text="answer early once this many of the tasks are final (default 1)")


class ResultsSerializer(serializers.Serializer):
    results = ResultSerializer(many=True, help_text="the final tasks, each as GET /result answers it")
    pending = serializers.DictField(child=serializers.CharField(), help_text="task id -> status of the others")
