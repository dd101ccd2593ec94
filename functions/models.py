"""The durable record: functions, tasks and workers (Redis holds the hot mirror)."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Function(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="faas_functions")
    name = models.CharField(max_length=200)
    payload = models.BinaryField(help_text="dill bytes of the callable; never unpickled by the web server")
    payload_size = models.PositiveIntegerField(default=0)
    retry_policy = models.JSONField(null=True, blank=True,
                                    help_text="default retry policy of its tasks (workers.retrying.RetryPolicy)")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # issue 16: a name's versions, content-addressed (functions.versions)
    version = models.PositiveIntegerField(default=1, help_text="1, 2, ... per owner and name: run it as name@version")
    digest = models.CharField(max_length=64, blank=True, default="", db_index=True,
                              help_text="sha256 of the payload: the same bytes under the same name are one version")
    webhook_url = models.URLField(max_length=2000, blank=True, default="",
                                  help_text="gets a signed POST when any task of this function finishes (issue 16)")
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True,
                                                  help_text="default memory allowance of its tasks (MiB)")
    cpu_limit_s = models.PositiveIntegerField(null=True, blank=True, help_text="default CPU seconds of its tasks")
    needs = models.JSONField(default=list, blank=True,
                             help_text="modules outside the standard library its pickle imports (from its opcodes)")
    python_version = models.CharField(max_length=30, blank=True, default="", help_text="the registering client's")
    dill_version = models.CharField(max_length=30, blank=True, default="", help_text="the registering client's")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name", "version"], name="function_version_once_per_owner"),
            models.UniqueConstraint(fields=["name", "version"], condition=models.Q(owner__isnull=True),
                                    name="function_version_once_anonymous"),  # NULL owners never collide above
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.version} ({self.id})"


class Task(models.Model):
    class Status(models.TextChoices):
        QUEUED = "QUEUED"
        RUNNING = "RUNNING"
        COMPLETED = "COMPLETED"
        FAILED = "FAILED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="faas_tasks")
    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="tasks")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    payload = models.BinaryField(help_text="dill bytes of ((args...), {kwargs})")
    payload_size = models.PositiveIntegerField(default=0)
    result = models.BinaryField(null=True, blank=True, help_text="dill bytes of the value or the exception")
    result_size = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    output = models.TextField(blank=True, default="", help_text="the tail of what the function printed or logged")
    attempts = models.PositiveIntegerField(default=0)
    timeout = models.FloatField(null=True, blank=True, help_text="deadline in seconds; empty means the dispatcher's")
    worker = models.ForeignKey("Worker", null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    dispatcher = models.CharField(max_length=200, blank=True, default="",
                                  help_text="the dispatcher holding the task while it runs (its consumer name)")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    # issue 16: resource limits set in the worker's process before the call (workers.limits)
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True, help_text="memory allowance (MiB)")
    cpu_limit_s = models.PositiveIntegerField(null=True, blank=True, help_text="CPU seconds allowed")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"]), models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"


class Worker(models.Model):
    """A worker process group seen by a dispatcher (a push/pull worker, or the local pool)."""

    identity = models.CharField(max_length=100, unique=True)
    mode = models.CharField(max_length=10)
    hostname = models.CharField(max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(default=0)
    processes = models.PositiveIntegerField(default=0)
    busy = models.PositiveIntegerField(default=0)
    alive = models.BooleanField(default=True, db_index=True)
    draining = models.BooleanField(default=False, help_text="takes no new work, finishes what it has")
    tasks_done = models.PositiveIntegerField(default=0)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-alive", "-last_heartbeat"]

    def __str__(self) -> str:
        return f"{self.mode} worker {self.identity}"


# --- issue 16 (standout): idempotency keys, function versions, audit trail, webhooks --------

class IdempotencyKey(models.Model):
    """One client-chosen key per owner: the database's unique constraint decides which of two
    racing requests queues the task, and the other answers the same task id."""

    owner_key = models.CharField(max_length=32, help_text='the user id, or "" for anonymous use (as in Redis)')
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the call the key was first used for")
    task_id = models.UUIDField(help_text="the task this key answers (its row appears once the submit commits)")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner_key", "key"], name="idempotency_key_once_per_owner")]

    def __str__(self) -> str:
        return f"{self.key} → {self.task_id}"


class AuditQuerySet(models.QuerySet):
    """Bulk changes would bypass AuditEntry.save/delete: refuse them too."""

    def update(self, **kwargs):
        raise PermissionError("The audit trail is append-only: entries are never changed.")

    def delete(self):
        raise PermissionError("The audit trail is append-only: entries are never deleted.")


class AuditEntry(models.Model):
    """Who did what to which object, when, and through which door; written once, never changed."""

    class Via(models.TextChoices):
        API = "api"
        ADMIN = "admin"
        CLI = "cli", "command line"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                              related_name="+", db_constraint=False)
    actor_name = models.CharField(max_length=150, help_text="kept when the user is deleted; empty: anonymous")
    via = models.CharField(max_length=5, choices=Via.choices)
    action = models.CharField(max_length=20, db_index=True)
    object_type = models.CharField(max_length=20)
    object_id = models.CharField(max_length=64, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["actor", "-at"]), models.Index(fields=["object_type", "object_id"])]

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError("The audit trail is append-only: entries are never changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("The audit trail is append-only: entries are never deleted.")

    def __str__(self) -> str:
        who = self.actor_name or "anonymous"
        return f"{self.at:%Y-%m-%d %H:%M:%S} {who} {self.action} {self.object_type} {self.object_id}"


class WebhookDelivery(models.Model):
    """One signed POST of a task's final state to a URL, tried until it is accepted or the
    attempts run out (functions.webhooks; sent by `manage.py run_webhooks`)."""

    class State(models.TextChoices):
        WAITING = "WAITING", "waiting for the task to finish"
        PENDING = "PENDING", "to be sent"
        DELIVERED = "DELIVERED"
        GAVE_UP = "GAVE_UP", "gave up"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="webhook_deliveries")
    owner_key = models.CharField(max_length=32, help_text="whose signing secret signs it")
    url = models.URLField(max_length=2000)
    state = models.CharField(max_length=10, choices=State.choices, default=State.WAITING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.task_id} → {self.url} ({self.state})"
