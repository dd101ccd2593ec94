"""`python manage.py run_dispatcher -m local|pull|push`: a thin shell over the dispatcher."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from dispatch.config import ConfigError, DispatcherConfig
from dispatch.modes import dispatcher_class
from functions import startup
from functions.taskstore import store_for
from workers import protocol


class Command(BaseCommand):
    help = "Take queued tasks from Redis and run them on workers (local pool, ZeroMQ pull or push workers)."

    def add_arguments(self, parser):
        parser.add_argument("-m", "--mode", choices=["local", "pull", "push"], required=True)
        parser.add_argument("-p", "--port", type=int, default=7001, help="ZeroMQ port for pull/push workers")
        parser.add_argument("-w", "--workers", type=int, default=None, help="local pool size (default: CPU count)")
        parser.add_argument("-t", "--timeout", type=float, default=settings.FAAS_TASK_TIMEOUT,
                            help="default task deadline in seconds")
        parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--heartbeat-interval", type=float, default=protocol.HEARTBEAT_INTERVAL)
        parser.add_argument("--heartbeat-liveness", type=int, default=protocol.HEARTBEAT_LIVENESS,
                            help="missed heartbeats before a worker is declared dead")
        parser.add_argument("--retries", type=int, default=0, help="times a lost task is re-queued before it fails")
        parser.add_argument("--keys", dest="keys_dir", default=None,
                            help="CURVE key directory (python -m workers.security generate DIR)")
        parser.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
        parser.add_argument("--flush-interval", type=float, default=0.2,
                            help="seconds between batched database writes (default 0.2)")
        parser.add_argument("--soft-timeout", type=float, default=None,
                            help="seconds after which a task's function gets SoftTimeLimitExceeded (before -t)")
        parser.add_argument("--max-tasks-per-child", type=int, default=None,
                            help="local pool: replace a process after this many tasks")
        parser.add_argument("--max-memory-per-child", type=int, default=None,
                            help="local pool: replace a process whose resident memory passed this many KiB")

    def handle(self, *args, **options):
        values = {k: options[k] for k in ("mode", "port", "bind", "timeout", "heartbeat_interval",
                                          "heartbeat_liveness", "retries", "keys_dir", "insecure", "flush_interval",
                                          "soft_timeout", "max_tasks_per_child", "max_memory_per_child")}
        if options["workers"] is not None:
            values["workers"] = options["workers"]
        config = DispatcherConfig(redis_url=settings.REDIS_URL, max_result_bytes=settings.FAAS_MAX_RESULT_BYTES,
                                  result_ttl=settings.FAAS_RESULT_TTL, history_ttl=settings.FAAS_TASK_HISTORY_TTL,
                                  retention_interval=settings.FAAS_RETENTION_INTERVAL, **values)
        try:
            config.validate()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        startup.check_dispatcher(settings, store_for(config.redis_url))
        dispatcher_class(config.mode)(config).run()
