"""Input and output shapes of the REST API; payload rules live in workers.serialization."""

import uuid
from dataclasses import asdict

from django.conf import settings
from django.core.validators import URLValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from functions.errors import PayloadTooLarge
from workers import serialization
from workers.exceptions import PayloadError
from workers.exceptions import PayloadTooLarge as PayloadTooLargeError
from workers.retrying import PolicyError, RetryPolicy


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


class RetryPolicyField(serializers.JSONField):
    """{"max_retries", "backoff", "backoff_max", "jitter", "retry_on": [exception names]}."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("help_text", "retry policy: max_retries, backoff (s), backoff_max (s), jitter, "
                                       "retry_on (exception class names, default all)")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return asdict(RetryPolicy.from_dict(super().to_internal_value(data)))
        except PolicyError as exc:
            raise serializers.ValidationError(str(exc)) from None


class RegisterFunctionSerializer(LimitsMixin, serializers.Serializer):
    name = serializers.CharField(max_length=200)
    payload = PayloadField()
    retry = RetryPolicyField()
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


class LaterMixin(serializers.Serializer):
    """`countdown` or `eta`: run no earlier than that (the task waits in the delayed set)."""

    countdown = serializers.FloatField(required=False, min_value=0, max_value=366 * 24 * 3600, allow_null=True,
                                       help_text="seconds to wait before the task may run")
    eta = serializers.DateTimeField(required=False, allow_null=True,
                                    help_text="earliest time the task may run (ISO 8601)")


def not_before(data: dict, received_at: float) -> float | None:
    """The unix time validated `countdown`/`eta` allow the tasks to run from, or None to
    queue them now; both given is a 400. (A function, not a `validate` hook: the API's lean
    validation runs field validators only.)"""
    if data.get("countdown") is not None and data.get("eta") is not None:
        raise serializers.ValidationError({"eta": "Give countdown or eta, not both."})
    if data.get("countdown"):
        return received_at + data["countdown"]
    return data["eta"].timestamp() if data.get("eta") is not None else None


class ExecuteFunctionSerializer(FunctionReferenceMixin, LimitsMixin, LaterMixin):
    retry = RetryPolicyField(help_text="retry policy of this task, over its function's")
    payload = PayloadField(help_text="base64 of dill.dumps(((args...), {kwargs}))")
    timeout = serializers.FloatField(required=False, min_value=0.001, allow_null=True,
                                     help_text="deadline in seconds (optional)")
    idempotency_key = serializers.CharField(required=False, allow_null=True, max_length=255,
                                            help_text=IDEMPOTENCY_HELP)
    webhook_url = webhook_field("gets a signed POST with the final state (instead of the function's)")


class ExecuteBatchSerializer(FunctionReferenceMixin, LimitsMixin, LaterMixin):
    retry = RetryPolicyField(help_text="retry policy of these tasks, over their function's")
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
    progress = serializers.FloatField(required=False, help_text="while RUNNING: the function's last report, 0 to 1")
    progress_message = serializers.CharField(required=False, allow_blank=True,
                                             help_text="while RUNNING: the message of that report")


class ResultSerializer(StatusSerializer):
    result = serializers.CharField(allow_null=True, help_text="serialize(value) or serialize(exception); null before")
    error = serializers.CharField(required=False, help_text="plain-text reason, when FAILED")
    output = serializers.CharField(required=False, allow_blank=True,
                                   help_text="once final: the last 64 KiB the function printed or logged")
    expired = serializers.BooleanField(required=False, help_text="true when the result was dropped after its TTL")


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

# --- listing (GET /tasks, GET /functions) ---------------------------------------------------

class TaskListQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["QUEUED", "RUNNING", "COMPLETED", "FAILED"], required=False)
    function = IdField(required=False, help_text="only tasks of this function id")
    since = serializers.DateTimeField(required=False, help_text="created at or after (ISO 8601)")
    until = serializers.DateTimeField(required=False, help_text="created before (ISO 8601)")
    cursor = serializers.CharField(required=False, help_text="`next` of the previous page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, default=50)


class FunctionListQuerySerializer(serializers.Serializer):
    cursor = serializers.CharField(required=False, help_text="`next` of the previous page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, default=50)


class TaskRowSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    function_id = serializers.UUIDField()
    function_name = serializers.CharField()
    status = serializers.ChoiceField(choices=["QUEUED", "RUNNING", "COMPLETED", "FAILED"])
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(help_text="first line of the error, when FAILED")


class TaskPageSerializer(serializers.Serializer):
    results = TaskRowSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="cursor of the next page; null on the last")


class FunctionRowSerializer(serializers.Serializer):
    function_id = serializers.UUIDField()
    name = serializers.CharField()
    payload_size = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class FunctionDetailSerializer(FunctionRowSerializer):
    tasks = serializers.DictField(child=serializers.IntegerField(), help_text="task count per status")


class FunctionPageSerializer(serializers.Serializer):
    results = FunctionRowSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="cursor of the next page; null on the last")


class FunctionDeletedSerializer(serializers.Serializer):
    function_id = serializers.UUIDField()
    deleted_tasks = serializers.IntegerField(help_text="finished tasks whose record went with the function")
