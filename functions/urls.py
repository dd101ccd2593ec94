"""API routes; each path answers with and without a trailing slash."""

from django.urls import re_path

from functions import health, metrics, views


def both(path: str, view, name: str):
    """One route matching `path` and `path/`, so existing clients need no redirect."""
    return re_path(rf"^{path}/?$", view.as_view(), name=name)


urlpatterns = [
    both("register_function", views.RegisterFunctionView, "register-function"),
    both("execute_function", views.ExecuteFunctionView, "execute-function"),
    both("execute_batch", views.ExecuteBatchView, "execute-batch"),
    both(r"status/(?P<task_id>[^/]+)", views.StatusView, "task-status"),
    both(r"result/(?P<task_id>[^/]+)", views.ResultView, "task-result"),
    both("results", views.ResultsView, "task-results"),
    both(r"cancel/(?P<task_id>[^/]+)", views.CancelView, "task-cancel"),
    both("tasks", views.TaskListView, "task-list"),
    both(r"tasks/(?P<task_id>[^/]+)/events", views.TaskEventsView, "task-events"),
    both(r"tasks/(?P<task_id>[^/]+)", views.TaskDetailView, "task-detail"),
    both("functions", views.FunctionListView, "function-list"),
    both(r"functions/(?P<name>[^/]+)/versions", views.FunctionVersionsView, "function-versions"),
    both(r"functions/(?P<function_id>[^/]+)", views.FunctionDetailView, "function-detail"),
    both(r"webhooks/secret", views.WebhookSecretView, "webhook-secret"),
    re_path(r"^healthz/?$", health.healthz, name="healthz"),
    re_path(r"^readyz/?$", health.readyz, name="readyz"),
    re_path(r"^metrics/?$", metrics.metrics, name="metrics"),
]
