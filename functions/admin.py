"""Admin for functions, tasks and workers, plus the operators' actions and the live dashboard.

Dispatcher-owned state is read-only; nothing here unpickles a payload or a result (the
blobs are never even loaded). Lists stay fast with 100,000 tasks: no full count, no
joins the planner could walk first, no per-row queries.
"""

from __future__ import annotations

import uuid

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Count
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from functions import admin_actions, admin_views, webhooks
from functions.models import AuditEntry, Function, Task, WebhookDelivery, Worker

admin.site.index_template = "functions/admin/index.html"  # adds the dashboard link
admin.site.site_header = "FaaS platform administration"

FUNCTION_FILTER_LIMIT = 200  # functions offered in the task filter, newest first


class FunctionFilter(admin.SimpleListFilter):
    """Tasks by function, without loading every Function (and its payload) as Django's
    related-field filter would."""

    title = "function"
    parameter_name = "function__id__exact"

    def lookups(self, request, model_admin):
        rows = Function.objects.order_by("-created_at").values_list("id", "name", "version")[:FUNCTION_FILTER_LIMIT]
        return [(str(fid), f"{name}@{version} ({str(fid)[:8]})") for fid, name, version in rows]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        try:
            return queryset.filter(function_id=uuid.UUID(self.value()))
        except ValueError as exc:
            raise IncorrectLookupParameters(exc) from exc


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are created by the API and the dispatcher, never by an admin form."""

    def has_add_permission(self, request) -> bool:
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Function)
class FunctionAdmin(ReadOnlyAdmin):
    list_display = ["name", "version", "id", "owner", "payload_size", "created_at", "tasks_link"]
    list_filter = ["owner", "created_at"]
    search_fields = ["name", "id", "digest"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_select_related = ["owner"]
    readonly_fields = ["id", "name", "version", "digest", "owner", "payload_size", "created_at", "tasks_link",
                       "versions", "webhook_url", "memory_limit_mb", "cpu_limit_s", "needs", "python_version",
                       "dill_version"]
    exclude = ["payload"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("payload")

    @admin.display(description="tasks")
    def tasks_link(self, obj: Function) -> str:
        url = reverse("admin:functions_task_changelist") + f"?{FunctionFilter.parameter_name}={obj.id}"
        return format_html('<a href="{}">tasks of this function</a>', url)

    @admin.display(description="versions of this name")
    def versions(self, obj: Function) -> str:
        """Every version of the name (functions.versions), each with the tasks it ran."""
        rows = (Function.objects.filter(owner_id=obj.owner_id, name=obj.name).order_by("-version")
                .annotate(ran=Count("tasks")).values_list("id", "version", "created_at", "ran")[:50])
        tasks = reverse("admin:functions_task_changelist") + f"?{FunctionFilter.parameter_name}="
        items = ((reverse("admin:functions_function_change", args=[fid]), obj.name, version, created,
                  tasks + str(fid), ran) for fid, version, created, ran in rows)
        return format_html("<ul>{}</ul>", format_html_join(
            "", '<li><a href="{}">{}@{}</a> registered {}: <a href="{}">{} task(s)</a></li>', items))


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = ["short_id", "function_name", "status_badge", "owner", "worker", "attempts", "created_at",
                    "run_time"]
    list_display_links = ["short_id"]
    list_filter = ["status", FunctionFilter, "worker", "owner", "created_at"]
    search_fields = ["id", "function__name"]
    date_hierarchy = "created_at"
    sortable_by = ["short_id", "status_badge", "created_at"]  # indexed columns only
    show_full_result_count = False
    list_per_page = 50
    list_select_related = ["function", "owner", "worker"]
    actions = [admin_actions.retry_tasks, admin_actions.cancel_tasks, admin_actions.purge_queue]
    readonly_fields = ["id", "function", "owner", "status", "attempts", "worker", "timeout", "retry_of", "retries",
                       "payload_size", "result_size", "created_at", "dispatched_at", "started_at", "finished_at",
                       "queue_wait", "run_time", "error_text", "output_text", "memory_limit_mb", "cpu_limit_s"]
    fieldsets = [
        (None, {"fields": ["id", "function", "owner", "status", "attempts", "worker", "timeout", "retry_of",
                           "retries"]}),
        ("Sizes (bytes)", {"fields": ["payload_size", "result_size"]}),
        ("Resource limits", {"fields": ["memory_limit_mb", "cpu_limit_s"]}),
        ("Timings", {"fields": ["created_at", "dispatched_at", "started_at", "finished_at", "queue_wait", "run_time"]}),
        ("Error and remote traceback", {"fields": ["error_text"]}),
        ("Output (stdout, stderr and logging, the last 64 KiB)", {"fields": ["output_text"]}),
    ]

    class Media:
        css = {"all": ["functions/admin.css"]}

    def get_queryset(self, request):
        # The blobs can be megabytes each: a page of tasks must not read them.
        return super().get_queryset(request).defer("payload", "result", "output", "function__payload")

    def get_urls(self):
        dashboard = self.admin_site.admin_view(lambda request: admin_views.dashboard_view(request, self.admin_site))
        return [path("dashboard/", dashboard, name="functions_dashboard"), *super().get_urls()]

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deleting collects every related row: use purge or cancel
        return actions

    @admin.display(description="task", ordering="id")
    def short_id(self, obj: Task) -> str:
        return format_html('<code title="{}">{}</code>', obj.id, str(obj.id)[:8])

    @admin.display(description="function", ordering="function__name")
    def function_name(self, obj: Task) -> str:
        return f"{obj.function.name}@{obj.function.version}"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Task) -> str:
        return format_html('<span class="faas-status faas-status-{}">{}</span>', obj.status.lower(), obj.status)

    @admin.display(description="queue wait")
    def queue_wait(self, obj: Task) -> str:
        return seconds_between(obj.created_at, obj.started_at or obj.dispatched_at)

    @admin.display(description="run time")
    def run_time(self, obj: Task) -> str:
        return seconds_between(obj.started_at or obj.dispatched_at, obj.finished_at)

    @admin.display(description="retried as")
    def retries(self, obj: Task) -> str:
        ids = obj.retries.values_list("id", flat=True)[:20]
        links = ((reverse("admin:functions_task_change", args=[tid]), tid) for tid in ids)
        return format_html_join(", ", '<a href="{}">{}</a>', links) or "-"

    @admin.display(description="error")
    def error_text(self, obj: Task) -> str:
        if not obj.error:
            return "-"
        return format_html('<pre class="faas-traceback">{}</pre>', obj.error)

    @admin.display(description="output")
    def output_text(self, obj: Task) -> str:
        return format_html('<pre class="faas-traceback">{}</pre>', obj.output) if obj.output else "-"


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ["identity", "mode", "hostname", "pid", "processes", "busy", "alive", "draining", "tasks_done",
                    "last_heartbeat"]
    list_filter = ["mode", "alive", "draining"]
    search_fields = ["identity", "hostname"]
    actions = [admin_actions.drain_workers]
    readonly_fields = list_display + ["registered_at"]


def seconds_between(start, end) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.3f} s"



@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """The append-only audit trail (functions.audit): filter by user, action, object."""

    list_display = ["at", "actor_name", "via", "action", "object_type", "object_id", "detail"]
    list_filter = ["action", "object_type", "via", ("actor", admin.RelatedOnlyFieldListFilter), "at"]
    search_fields = ["object_id", "actor_name", "action"]
    date_hierarchy = "at"
    show_full_result_count = False
    readonly_fields = ["at", "actor", "actor_name", "via", "action", "object_type", "object_id", "detail"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.action(permissions=["change"], description="Send selected webhook deliveries again now")
def redeliver(modeladmin, request, queryset) -> None:
    count = webhooks.redeliver(queryset)
    modeladmin.message_user(request, f"{count} delivery(ies) will be sent again in a moment.", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """Signed webhook deliveries (functions.webhooks): what was sent where, and how it went."""

    list_display = ["task_link", "url", "state", "attempts", "last_status_code", "next_attempt_at", "delivered_at",
                    "created_at"]
    list_filter = ["state", "created_at"]
    search_fields = ["task__id", "url"]
    show_full_result_count = False
    actions = [redeliver]
    readonly_fields = ["task_link", "owner_key", "url", "state", "attempts", "last_status_code", "last_error",
                       "next_attempt_at", "delivered_at", "created_at"]
    exclude = ["task"]

    @admin.display(description="task")
    def task_link(self, obj: WebhookDelivery) -> str:
        return format_html('<a href="{}"><code>{}</code></a>', reverse("admin:functions_task_change",
                                                                       args=[obj.task_id]), str(obj.task_id)[:8])
