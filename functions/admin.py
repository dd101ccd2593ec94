"""Admin for functions, tasks and workers; dispatcher-owned state is read-only."""

from django.contrib import admin

from functions.models import Function, Task, Worker


@admin.register(Function)
class FunctionAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "owner", "payload_size", "created_at"]
    search_fields = ["name", "id"]
    list_filter = ["owner"]
    exclude = ["payload"]
    readonly_fields = ["id", "payload_size", "created_at"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "function", "status", "owner", "attempts", "worker", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["id"]
    exclude = ["payload", "result"]
    list_select_related = ["function", "owner", "worker"]
    readonly_fields = ["id", "function", "owner", "status", "payload_size", "result_size", "error", "attempts",
                       "worker", "retry_of", "created_at", "dispatched_at", "started_at", "finished_at", "timeout"]


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["identity", "mode", "hostname", "pid", "processes", "busy", "alive", "last_heartbeat"]
    list_filter = ["mode", "alive"]
    search_fields = ["identity", "hostname"]
