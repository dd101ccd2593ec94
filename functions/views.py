"""Thin API views: validate input, call one service, shape the answer."""

import time

import redis
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from functions import audit, events, idempotency, listing, services, task_limits, versions, webhooks
from functions import serializers as s
from functions.lean import LeanViewMixin, validated
from workers import serialization

MAX_WAIT_SECONDS = 60.0  # longest a client may hold a /result long-poll open


def task_body(view: services.TaskView, with_result: bool) -> dict:
    body = {"task_id": view.task_id, "status": view.status}
    if view.status == "RUNNING" and view.progress is not None:
        body["progress"], body["progress_message"] = view.progress, view.progress_message
    if with_result:
        body["result"] = serialization.encode(view.result) if view.result is not None else None
        if view.status == "FAILED":
            body["error"] = view.error
        if view.status in ("COMPLETED", "FAILED"):
            body["output"] = view.output
            if view.result is None:  # dropped after FAAS_RESULT_TTL (functions.retention)
                body["expired"] = True
    return body


class RegisterFunctionView(LeanViewMixin, APIView):
    """Register a callable: `payload` is base64 of `dill.dumps(fn)`."""

    @extend_schema(request=s.RegisterFunctionSerializer, responses={201: s.FunctionIdSerializer})
    def post(self, request):
        data = validated(s.RegisterFunctionSerializer, request.data)
        webhook_url = data.pop("webhook_url", None)
        memory_mb, cpu_s = data.pop("memory_mb", None), data.pop("cpu_seconds", None)
        client = {"python": data.pop("python", ""), "dill": data.pop("dill", "")}
        try:
            function, new = versions.register(owner=request.user, **data)
        except versions.BadName as exc:
            raise ValidationError({"name": str(exc)}) from None
        webhooks.set_function_url(function, webhook_url)
        task_limits.set_function_defaults(function, memory_mb, cpu_s)
        if new:
            versions.record_environment(function, client["python"], client["dill"])
        audit.from_api(request, audit.REGISTERED, "function", function.id, name=f"{function.name}@{function.version}",
                       new_version=new)
        return Response({"function_id": str(function.id), "name": function.name, "version": function.version,
                         "new_version": new}, status=status.HTTP_201_CREATED)


class FunctionVersionsView(APIView):
    """Every version of one of your functions, newest first, with the tasks each ran."""

    @extend_schema(responses={200: s.FunctionVersionSerializer(many=True)})
    def get(self, request, name):
        return Response(versions.history(owner=request.user, name=name))


def function_named(request, data: dict):
    """The function a call names: by `function_id`, or by `function` (name or name@N)."""
    if "function_id" in data:
        return services.function_get(owner=request.user, function_id=data["function_id"])
    return versions.resolve(owner=request.user, reference=data["function"])


WAIT_PARAMETER = OpenApiParameter("wait", float, description="seconds to wait for a final state (0 to 60)")


def wait_seconds(request) -> float:
    """The `?wait=` of a long-poll: 0 when absent, 400 unless between 0 and 60 seconds."""
    raw = request.query_params.get("wait")
    if raw in (None, ""):
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise ValidationError({"wait": f"{raw!r} is not a number of seconds."}) from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise ValidationError({"wait": f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds."})
    return wait


class ExecuteFunctionView(LeanViewMixin, APIView):
    """Queue one call: `payload` is base64 of `dill.dumps(((args...), {kwargs}))`. With
    `?wait=<seconds>` the answer also carries the result, as soon as the task finishes
    (a synchronous call in one request; still QUEUED or RUNNING when `wait` runs out)."""

    @extend_schema(request=s.ExecuteFunctionSerializer, responses={201: s.ExecutedSerializer},
                   parameters=[WAIT_PARAMETER])
    def post(self, request):
        received_at = time.time()
        wait = wait_seconds(request)
        data = s.check_function_reference(validated(s.ExecuteFunctionSerializer, request.data))
        function = function_named(request, data)
        key = request_key(request, data.get("idempotency_key"))
        payload, timeout = data["payload"], data.get("timeout")
        webhook_url = data.get("webhook_url")
        limits = limits_of(function, data)
        later = {"not_before": s.not_before(data, received_at), "retry": data.get("retry")}
        if key is None:
            task_id = str(services.task_submit_batch(owner=request.user, function=function, payloads=[payload],
                                                     timeout=timeout, received_at=received_at, limits=limits,
                                                     companions_of=companions(request, function, webhook_url),
                                                     **later)[0].id)
        else:
            task_id = submit_once(request, function, [payload], [key], timeout, received_at, webhook_url,
                                  limits, later)[0]
        queued = {"task_id": task_id}
        if wait:
            try:
                queued = task_body(services.task_wait(owner=request.user, task_id=task_id, timeout=wait), True)
            except redis.RedisError:  # the task is queued: its id must reach the client, not a 503
                pass
        return Response(queued, status=status.HTTP_201_CREATED)


class ExecuteBatchView(LeanViewMixin, APIView):
    """Queue many calls of one function in one request; ids come back in order."""

    @extend_schema(request=s.ExecuteBatchSerializer, responses={201: s.TaskIdsSerializer})
    def post(self, request):
        received_at = time.time()
        data = s.check_batch(validated(s.ExecuteBatchSerializer, request.data))
        function = function_named(request, data)
        payloads, timeout = data["payloads"], data.get("timeout")
        webhook_url = data.get("webhook_url")
        limits = limits_of(function, data)
        later = {"not_before": s.not_before(data, received_at), "retry": data.get("retry")}
        keys = data.get("idempotency_keys")
        base = request_key(request, data.get("idempotency_key"))
        if keys is None and base is not None:
            keys = [f"{base}:{i}" for i in range(len(payloads))]
        if keys is None:
            tasks = services.task_submit_batch(owner=request.user, function=function, payloads=payloads,
                                               timeout=timeout, received_at=received_at, limits=limits,
                                               companions_of=companions(request, function, webhook_url),
                                               **later)
            task_ids = [str(t.id) for t in tasks]
        else:
            task_ids = submit_once(request, function, payloads, keys, timeout, received_at, webhook_url, limits,
                                   later)
        return Response({"task_ids": task_ids}, status=status.HTTP_201_CREATED)


def companions(request, function, webhook_url: str | None):
    """What a submit commits with its task rows: its audit entry (functions.audit) and the
    webhook deliveries of its tasks (functions.webhooks: the task's URL, or the function's)."""
    url = webhook_url or webhooks.function_url(function.id)
    return lambda tasks: [audit.ran(request, function, tasks),
                          *webhooks.deliveries_for(tasks, services.owner_key(request.user), url)]


def request_key(request, field: str | None) -> str | None:
    """The request's idempotency key (header or field), or None; 400 when unusable."""
    try:
        return idempotency.requested_key(request.headers.get(idempotency.HEADER), field)
    except ValueError as exc:
        raise ValidationError({"idempotency_key": str(exc)}) from None


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def limits_of(function, data: dict) -> tuple[int | None, int | None]:
    """The call's resource limits (memory MiB, CPU seconds): its own, else its function's."""
    return task_limits.effective(function.id, data.get("memory_mb"), data.get("cpu_seconds"))


def submit_once(request, function, payloads, keys, timeout, received_at, webhook_url, limits,
                later: dict) -> list[str]:
    """Queue each keyed call at most once (functions.idempotency); 409 when a key is misused.
    `later` holds the call's not_before and retry policy."""
    try:
        return idempotency.submit_once(owner=request.user, function=function, payloads=payloads, keys=keys,
                                       timeout=timeout, received_at=received_at, limits=limits,
                                       companions_of=companions(request, function, webhook_url), **later)
    except (idempotency.KeyReused, idempotency.KeyBusy) as exc:
        raise Conflict(str(exc)) from None


class StatusView(LeanViewMixin, APIView):
    @extend_schema(responses={200: s.StatusSerializer})
    def get(self, request, task_id):
        view = services.task_view(owner=request.user, task_id=task_id)
        return Response(task_body(view, with_result=False))


class ResultView(LeanViewMixin, APIView):
    """The result; `?wait=<seconds>` answers as soon as the task finishes (long-poll)."""

    @extend_schema(responses={200: s.ResultSerializer}, parameters=[WAIT_PARAMETER])
    def get(self, request, task_id):
        wait = wait_seconds(request)
        if wait:
            view = services.task_wait(owner=request.user, task_id=task_id, timeout=wait)
        else:
            view = services.task_view(owner=request.user, task_id=task_id)
        return Response(task_body(view, with_result=True))


class CancelView(LeanViewMixin, APIView):
    """Cancel a task: a queued task never runs; a running task's process is stopped.
    `?queued_only=1` cancels only a task that has not started (409 otherwise)."""

    @extend_schema(request=None, responses={200: s.StatusSerializer},
                   parameters=[OpenApiParameter("queued_only", bool, description="cancel only if not started")])
    def post(self, request, task_id):
        task = services.task_get(owner=request.user, task_id=task_id)
        queued_only = request.query_params.get("queued_only", "").lower() in ("1", "true", "yes")
        try:
            services.task_cancel(task=task, queued_only=queued_only)
        except services.NotCancellable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        audit.from_api(request, audit.CANCELLED, "task", task.id, queued_only=queued_only)
        return Response(task_body(services.task_view(owner=request.user, task_id=task_id), with_result=False))


class ResultsView(LeanViewMixin, APIView):
    """Many tasks' results in one request: those already final, or, with `wait`, once at
    least `min` of them are (lingering a moment while more keep finishing) or `wait` runs
    out. Tasks not final yet are listed in `pending` with their status."""

    @extend_schema(request=s.ResultsRequestSerializer, responses={200: s.ResultsSerializer})
    def post(self, request):
        data = validated(s.ResultsRequestSerializer, request.data)
        views = services.tasks_wait(owner=request.user, task_ids=data["task_ids"],
                                    timeout=data["wait"], at_least=data["min"])
        results, pending = [], {}
        for view in views.values():
            if view.final:
                results.append(task_body(view, with_result=True))
            else:
                pending[view.task_id] = view.status
        return Response({"results": results, "pending": pending})


class TaskEventsView(APIView):
    """Server-sent events: each state change of a task and, last, its result (the /result
    body). `?timeout=` seconds (default and at most 3600) bounds the stream."""

    renderer_classes = [events.EventStreamRenderer, JSONRenderer, BrowsableAPIRenderer]

    @extend_schema(responses={(200, "text/event-stream"): str},
                   parameters=[OpenApiParameter("timeout", float, description="longest the stream stays open")])
    def get(self, request, task_id):
        services.task_view(owner=request.user, task_id=task_id)  # 404 before the stream starts
        raw = request.query_params.get("timeout") or events.MAX_STREAM_SECONDS
        try:
            seconds = min(float(raw), events.MAX_STREAM_SECONDS)
        except ValueError:
            raise ValidationError({"timeout": f"{raw!r} is not a number of seconds."}) from None
        response = StreamingHttpResponse(events.stream(owner=request.user, task_id=task_id, seconds=seconds),
                                         content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response


class WebhookSecretView(APIView):
    """Your webhook signing secret: check `FaaS-Signature: t=<unix>,v1=<hex>` where hex is
    HMAC-SHA256(secret, "<t>.<raw body>") (functions.webhook_signing.verify does it)."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response({"secret": webhooks.secret_for(services.owner_key(request.user)),
                         "header": "FaaS-Signature", "signed": "<t>.<raw body>", "algorithm": "HMAC-SHA256"})


class TaskDetailView(APIView):
    """A task with the function (and version) it runs: what a client needs to interpret a
    task id it did not submit itself (e.g. the django-tasks backend's get_result)."""

    @extend_schema(responses={200: dict})
    def get(self, request, task_id):
        task = services.task_get(owner=request.user, task_id=task_id)
        view = services.task_view(owner=request.user, task_id=task_id)
        return Response({"task_id": view.task_id, "status": view.status, "function_id": str(task.function_id),
                         "function": task.function.name, "version": task.function.version,
                         "created_at": task.created_at})


# --- listing: a user's own tasks and functions (functions.listing) -------------------------

def _query(serializer_class, request) -> dict:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


class TaskListView(APIView):
    """The caller's tasks, newest first; filter by status, function and creation time, and
    follow `next` (a cursor) for the following page."""

    @extend_schema(operation_id="tasks_list", parameters=[s.TaskListQuerySerializer],
                   responses={200: s.TaskPageSerializer})
    def get(self, request):
        q = _query(s.TaskListQuerySerializer, request)
        try:
            page = listing.tasks_list(owner=request.user, status=q.get("status"), function_id=q.get("function"),
                                      since=q.get("since"), until=q.get("until"), cursor=q.get("cursor"),
                                      limit=q["limit"])
        except listing.BadQuery as exc:
            raise ValidationError({"cursor": str(exc)}) from None
        return Response({"results": s.TaskRowSerializer(page.rows, many=True).data, "next": page.next_cursor})


class FunctionListView(APIView):
    """The caller's functions, newest first, without their payloads."""

    @extend_schema(operation_id="functions_list", parameters=[s.FunctionListQuerySerializer],
                   responses={200: s.FunctionPageSerializer})
    def get(self, request):
        q = _query(s.FunctionListQuerySerializer, request)
        try:
            page = listing.functions_list(owner=request.user, cursor=q.get("cursor"), limit=q["limit"])
        except listing.BadQuery as exc:
            raise ValidationError({"cursor": str(exc)}) from None
        return Response({"results": s.FunctionRowSerializer(page.rows, many=True).data, "next": page.next_cursor})


class FunctionDetailView(APIView):
    """One function: name, size, when registered, and its tasks counted by status.
    DELETE removes it and the record of its finished tasks; 409 while any is unfinished."""

    @extend_schema(operation_id="functions_retrieve", responses={200: s.FunctionDetailSerializer})
    def get(self, request, function_id):
        return Response(s.FunctionDetailSerializer(listing.function_detail(owner=request.user,
                                                                           function_id=function_id)).data)

    @extend_schema(operation_id="functions_destroy", responses={200: s.FunctionDeletedSerializer})
    def delete(self, request, function_id):
        try:
            removed = listing.function_delete(owner=request.user, function_id=function_id)
        except listing.FunctionInUse as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response({"function_id": str(function_id), "deleted_tasks": removed})
