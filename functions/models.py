"""The durable record: functions, tasks and workers (Redis holds the hot mirror)."""

import uuid

from django.conf import settings
from django.db import models


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

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


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
