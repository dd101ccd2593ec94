"""The audit trail: who registered, ran, cancelled, retried, purged, drained or paused what,
and when, through the API, the admin or the command line, in one append-only table.

Callers record at the door they serve (a view, an admin action), because only there is
the actor and the door known; services stay free of request objects. API tokens are
recorded through model signals, with the actor of the request in progress (a context
variable the middleware sets), so a token made by `drf_create_token` is recorded too.
A task submit's entry is committed in the same transaction as the task rows
(functions.groupcommit), so it costs no extra commit and never misses an accepted task.
"""

from __future__ import annotations

import contextvars

from django.db.models.signals import post_delete, post_save

from functions.models import AuditEntry

__all__ = ["AuditEntry", "entry", "record", "record_each", "ran", "from_api", "ActorMiddleware"]

REGISTERED, RAN, CANCELLED, RETRIED, PURGED, DRAINED, PAUSED = (
    "registered", "ran", "cancelled", "retried", "purged", "drained", "paused")
TOKEN_CREATED, TOKEN_REVOKED = "token created", "token revoked"

_current = contextvars.ContextVar("faas_audit_actor", default=(None, AuditEntry.Via.CLI))


def entry(*, actor, via: str, action: str, object_type: str, object_id="", **detail) -> AuditEntry:
    """An unsaved entry (for a caller that commits it with other rows)."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEntry(actor=user, actor_name=user.get_username() if user else "", via=via, action=action,
                      object_type=object_type, object_id=str(object_id), detail=detail)


def record(*, actor, via: str, action: str, object_type: str, object_id="", **detail) -> AuditEntry:
    """Write one entry now."""
    row = entry(actor=actor, via=via, action=action, object_type=object_type, object_id=object_id, **detail)
    row.save()
    return row


def record_each(*, actor, via: str, action: str, object_type: str, object_ids, **detail) -> None:
    """One entry per object, in one INSERT (an admin action over many tasks)."""
    rows = [entry(actor=actor, via=via, action=action, object_type=object_type, object_id=oid, **detail)
            for oid in object_ids]
    AuditEntry.objects.bulk_create(rows)


def ran(request, function, tasks) -> AuditEntry:
    """The entry of one submit request: the task, or for a batch the function and the count."""
    detail = {"function": f"{function.name}@{function.version}" if function.name else str(function.id)}
    if len(tasks) == 1:
        return entry(actor=request.user, via=AuditEntry.Via.API, action=RAN, object_type="task",
                     object_id=tasks[0].id, function_id=str(function.id), **detail)
    return entry(actor=request.user, via=AuditEntry.Via.API, action=RAN, object_type="function",
                 object_id=function.id, tasks=len(tasks), first_task=str(tasks[0].id), last_task=str(tasks[-1].id),
                 **detail)


def from_api(request, action: str, object_type: str, object_id="", **detail) -> AuditEntry:
    return record(actor=request.user, via=AuditEntry.Via.API, action=action, object_type=object_type,
                  object_id=object_id, **detail)


class ActorMiddleware:
    """Remember who makes the current request, for entries written by signals."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        via = AuditEntry.Via.ADMIN if request.path.startswith("/admin/") else AuditEntry.Via.API
        token = _current.set((getattr(request, "user", None), via))
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)


def _token_saved(sender, instance, created, **kwargs):
    if created:
        _token_event(TOKEN_CREATED, instance)


def _token_deleted(sender, instance, **kwargs):
    _token_event(TOKEN_REVOKED, instance)


def _token_event(action: str, token) -> None:
    actor, via = _current.get()
    record(actor=actor, via=via, action=action, object_type="token", object_id=token.key[:8] + "…",
           user=token.user.get_username())


def connect_signals() -> None:
    from rest_framework.authtoken.models import Token, TokenProxy

    for model in (Token, TokenProxy):  # the admin saves and deletes through the proxy
        post_save.connect(_token_saved, sender=model, dispatch_uid=f"faas-audit-saved-{model.__name__}")
        post_delete.connect(_token_deleted, sender=model, dispatch_uid=f"faas-audit-deleted-{model.__name__}")
