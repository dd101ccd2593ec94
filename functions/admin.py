"""Admin for functions, tasks and workers, plus the operators' actions and the live dashboard.

Dispatcher-owned state is read-only; nothing here unpickles a payload or a result (the
blobs are never even loaded). Lists stay fast with 100,000 tasks: no full count, no
joins the planner could walk first, no per-row queries.
"""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from functions import admin_actions, admin_views
from functions.models import Function, Task, Worker

admin.site.index_template = "functions/admin/index.html"  # adds the dashboard link
admin.site.site_header = "FaaS platform administration"

FUNCTION_FILTER_LIMIT = 200  # functions offered in the task filter, newest first


class FunctionFilter(admin.SimpleListFilter):
    """Tasks by function, without loading every Function (and its payload) as Django's
    related-field filter would."""

    title = "function"
    parameter_name = "function__id__exact"

    def lookups(self, request, model_admin):
        rows = Function.objects.order_by("-created_at").values_list("id", "name")[:FUNCTION_FILTER_LIMIT]
        return [(str(fid), f"{name} ({str(fid)[:8]})") for fid, name in rows]

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
    list_display = ["name", "id", "owner", "payload_size", "created_at", "tasks_link"]
    list_filter = ["owner", "created_at"]
    search_fields = ["name", "id"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_select_related = ["owner"]
    readonly_fields = ["id", "name", "owner", "payload_size", "created_at", "tasks_link"]
    exclude = ["payload"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("payload")

    @admin.display(description="tasks")
    def tasks_link(self, obj: Function) -> str:
        url = reverse("admin:functions_task_changelist") + f"?{FunctionFilter.parameter_name}={obj.id}"
        return format_html('<a href="{}">tasks of this function</a>', url)


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
                       "queue_wait", "run_time", "error_text", "output_text"]
    fieldsets = [
        (None, {"fields": ["id", "function", "owner", "status", "attempts", "worker", "timeout", "retry_of",
                           "retries"]}),
        ("Sizes (bytes)", {"fields": ["payload_size", "result_size"]}),
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
        return obj.function.name

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

