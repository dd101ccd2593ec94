"""Admin pages beyond the model lists: the live dashboard and the purge confirmation."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from functions import dashboard
from functions.models import Task
from functions.taskstore import store_for


def dashboard_view(request, admin_site) -> TemplateResponse:
    """The first paint is rendered here from the same snapshot the websocket sends on
    connect, so the page is right before its script runs and after every reconnect."""
    state = dashboard.snapshot(store_for(settings.REDIS_URL))
    context = {
        **admin_site.each_context(request),
        "title": "Live dashboard",
        "snapshot": state,
        "counts": [(status, state["counts"][status]) for status in Task.Status.values],
        "total": sum(state["counts"].values()),
        "tasks": [{**row, "created": as_datetime(row["created_at"])} for row in state["latest"]],
        "workers": [{**row, "heartbeat": as_datetime(row["last_heartbeat"])} for row in state["workers"]],
    }
    return TemplateResponse(request, "functions/dashboard.html", context)


def purge_confirmation(request, modeladmin) -> TemplateResponse:
    """Ask before purging, showing what would go; the form re-posts the action with post=yes."""
    r = store_for(settings.REDIS_URL)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Purge the task queue?",
        "opts": modeladmin.model._meta,
        "queued": Task.objects.filter(status=Task.Status.QUEUED).count(),
        "depth": r.queue_depth(),
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "functions/admin/purge_confirmation.html", context)


def as_datetime(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
