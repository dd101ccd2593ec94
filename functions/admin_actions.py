"""Operators' admin actions: retry, cancel, purge the queue, drain a worker.

Each is permission-checked by the admin (`permissions=["change"]`), calls one service,
and leaves a record in the admin log, so the history says who did what and when.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType

from functions import admin_views, audit, services
from functions.models import Task

CANCEL_REASON = "cancelled by an operator"
PURGE_REASON = "purged from the queue by an operator"


def audit_each(request, action: str, object_type: str, objects: list, **detail) -> None:
    """The audit trail's entries (functions.audit) for an operator's action."""
    audit.record_each(actor=request.user, via=audit.AuditEntry.Via.ADMIN, action=action, object_type=object_type,
                      object_ids=[getattr(o, "identity", None) or o.pk for o in objects], **detail)


def log_changes(request, objects: list, message: str) -> None:
    """One admin-log entry per changed object, written in one INSERT."""
    if objects:
        LogEntry.objects.log_actions(user_id=request.user.pk, queryset=objects, action_flag=CHANGE,
                                     change_message=message)


@admin.action(permissions=["change"], description="Retry selected FAILED tasks (as new linked tasks)")
def retry_tasks(modeladmin, request, queryset) -> None:
    # The payload is needed to run the call again; results and function payloads are not.
    failed = list(queryset.filter(status=Task.Status.FAILED).defer(None).defer("result", "function__payload"))
    created = []
    for task in failed:
        new = services.task_retry(task=task)
        created.append(new)
        log_changes(request, [task], f"Retried as task {new.id}.")
        audit_each(request, audit.RETRIED, "task", [task], new_task=str(new.id))
    log_changes(request, created, "Created by an operator's retry.")
    skipped = queryset.count() - len(failed)
    modeladmin.message_user(request, f"Retried {len(created)} task(s) as new tasks."
                            + (f" Skipped {skipped} that had not FAILED." if skipped else ""), messages.SUCCESS)


@admin.action(permissions=["change"], description="Cancel selected QUEUED or RUNNING tasks")
def cancel_tasks(modeladmin, request, queryset) -> None:
    candidates = queryset.select_related(None).filter(status__in=[Task.Status.QUEUED, Task.Status.RUNNING]).only("id")
    cancelled = []
    for task in candidates:
        try:
            services.task_cancel(task=task, reason=CANCEL_REASON)
        except services.NotCancellable:  # finished since the page was drawn
            continue
        cancelled.append(task)
    log_changes(request, cancelled, "Cancelled.")
    audit_each(request, audit.CANCELLED, "task", cancelled)
    level = messages.SUCCESS if cancelled else messages.WARNING
    modeladmin.message_user(request, f"Cancelled {len(cancelled)} task(s); finished tasks are left as they are.", level)


@admin.action(permissions=["change"], description="Purge the queue: FAIL every task still QUEUED (whole queue)")
def purge_queue(modeladmin, request, queryset):
    """Queue-wide, whatever is selected; asks for confirmation first, like delete does."""
    if request.POST.get("post") != "yes":
        return admin_views.purge_confirmation(request, modeladmin)
    purged = services.queue_purge(reason=PURGE_REASON)
    LogEntry.objects.create(user_id=request.user.pk, content_type=ContentType.objects.get_for_model(Task),
                            object_repr="task queue", action_flag=CHANGE,
                            change_message=f"Purged the queue: {len(purged)} task(s) FAILED as cancelled.")
    audit.record(actor=request.user, via=audit.AuditEntry.Via.ADMIN, action=audit.PURGED, object_type="queue",
                 tasks=len(purged))
    modeladmin.message_user(request, f"Purged the queue: {len(purged)} task(s) will never run.", messages.SUCCESS)
    return None


@admin.action(permissions=["change"], description="Drain selected workers (no new work; finish what they hold)")
def drain_workers(modeladmin, request, queryset) -> None:
    drained = [w for w in queryset.filter(alive=True) if services.worker_drain(identity=w.identity)]
    log_changes(request, drained, "Drain requested.")
    audit_each(request, audit.DRAINED, "worker", drained)
    skipped = queryset.count() - len(drained)
    modeladmin.message_user(request, f"Asked the dispatchers to drain {len(drained)} worker(s)."
                            + (f" Skipped {skipped} dead worker(s)." if skipped else ""), messages.SUCCESS)

