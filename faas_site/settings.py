"""Settings for the FaaS platform: the only place that reads the environment on the web side.

Every value has a default that works on one machine.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # git-ignored: SQLite database, Redis data, static files, keys
(VAR_DIR / "static").mkdir(parents=True, exist_ok=True)


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float | None) -> float | None:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


# --- security (README "Production") -----------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG", False)
# The built-in key signs sessions and CSRF tokens for anyone who has read this file, so it
# serves only with DEBUG on; otherwise a process refuses to start without a key of its own.
DEV_SECRET_KEY = "dev-insecure-faas-key-change-me-in-deployments-0123456789"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off: set DJANGO_SECRET_KEY to a long random string "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))') for a deployment, "
            "or DJANGO_DEBUG=1 for local development. `make run` and the tests set one for you.")
    SECRET_KEY = DEV_SECRET_KEY
# DJANGO_HTTPS=1: the site is served over HTTPS, by this process or a TLS-terminating proxy
# in front of it that sets X-Forwarded-Proto (and strips it from what clients send).
HTTPS = env_bool("DJANGO_HTTPS", False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    # Preloading is a promise to browsers that is slow to take back, so the operator opts in.
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]  # preload off on purpose: see the line above
ALLOWED_HOSTS = [h.strip() for h in env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
                 if h.strip()]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "functions",
    "dispatch",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "functions.audit.ActorMiddleware",  # who acts, for audit entries written by signals (issue 16)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "faas_site.urls"
# Paths work with and without a trailing slash: the URLconf lists both, so no redirects.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "faas_site.wsgi.application"
ASGI_APPLICATION = "faas_site.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=600
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; synchronous=NORMAL drops the fsync per
    # commit (safe against process crashes); IMMEDIATE avoids deadlocking lock upgrades.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file, so the dispatcher and servers they start see the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve static files from the finders too, so DEBUG off works without collectstatic.
WHITENOISE_USE_FINDERS = True

# --- the platform's own settings -------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
FAAS_ALLOW_ANONYMOUS = env_bool("FAAS_ALLOW_ANONYMOUS", False)
FAAS_MAX_PAYLOAD_BYTES = env_int("FAAS_MAX_PAYLOAD_BYTES", 16 * 1024 * 1024)
FAAS_MAX_RESULT_BYTES = env_int("FAAS_MAX_RESULT_BYTES", 16 * 1024 * 1024)
FAAS_TASK_TIMEOUT = env_float("FAAS_TASK_TIMEOUT", None)  # default task deadline, seconds
FAAS_RESULT_TTL = env_int("FAAS_RESULT_TTL", 7 * 24 * 3600)  # how long a finished task's result and bytes are kept
FAAS_TASK_HISTORY_TTL = env_float("FAAS_TASK_HISTORY_TTL", None)  # seconds before finished task rows go; unset: never
FAAS_RETENTION_INTERVAL = env_float("FAAS_RETENTION_INTERVAL", 600.0)  # seconds between clean-ups (0: none)
# How long a server process trusts an API token it has checked (0: ask the database every time).
FAAS_TOKEN_CACHE_SECONDS = env_float("FAAS_TOKEN_CACHE_SECONDS", 10.0) or 0.0
# How long an Idempotency-Key keeps answering the task it first queued (issue 16).
FAAS_IDEMPOTENCY_TTL = env_float("FAAS_IDEMPOTENCY_TTL", 24 * 3600.0)
# A scraper sending `Authorization: Bearer <this>` may read /metrics (staff sessions always may).
FAAS_METRICS_TOKEN = env_str("FAAS_METRICS_TOKEN", "")

# The JSON body holds base64 of the payload (4/3 larger) plus a little JSON around it.
DATA_UPLOAD_MAX_MEMORY_SIZE = FAAS_MAX_PAYLOAD_BYTES * 4 // 3 + FAAS_MAX_PAYLOAD_BYTES // 38 + 64 * 1024

THROTTLE_ANON = env_str("FAAS_THROTTLE_ANON", "")  # e.g. "100/min"; empty: no throttling
THROTTLE_USER = env_str("FAAS_THROTTLE_USER", "")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "functions.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["functions.permissions.IsAuthenticatedOrAnonymousAllowed"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "functions.errors.exception_handler",
    # DRF's parsers, each answering a malformed body with a 4xx (functions/parsers.py says how).
    "DEFAULT_PARSER_CLASSES": ["functions.parsers.JSONParser", "rest_framework.parsers.FormParser",
                               "functions.parsers.MultiPartParser"],
    # Throttling costs a cache round trip per request, so it is on only when a rate is set.
    "DEFAULT_THROTTLE_CLASSES": [cls for cls, rate in (
        ("rest_framework.throttling.AnonRateThrottle", THROTTLE_ANON),
        ("rest_framework.throttling.UserRateThrottle", THROTTLE_USER)) if rate],
    "DEFAULT_THROTTLE_RATES": {"anon": THROTTLE_ANON or None, "user": THROTTLE_USER or None},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "FaaS platform API",
    "DESCRIPTION": "Register Python functions, execute them on workers, read status and results.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "faas:cache",
    }
}

# redis-py 8 times out socket reads after 5 s by default, exactly as long as channels-redis
# blocks in BZPOPMIN waiting for a message, so every quiet websocket consumer crashed after
# ~5 s (django/channels_redis#422). A longer read timeout keeps them alive and still notices
# a dead connection.
CHANNEL_LAYER_SOCKET_TIMEOUT = 30
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT}],
                   "prefix": "faas:channels:"},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("FAAS_LOG_LEVEL", "INFO")},
    # Unknown task ids answer 404 all day long; logging each one costs CPU on the hot path.
    "loggers": {"django.server": {"level": "WARNING"}, "django.request": {"level": "ERROR"}},
}
