"""Production settings (issue 12, item 6): no silent built-in secret key, HTTPS settings that
`check --deploy` accepts, and what DJANGO_HTTPS=1 does to real answers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import requests

from scripts.redis_server import free_port
from scripts.stack import REPO
from tests.helpers import wait_until

# The production environment README.md documents ("Production"), with a made-up host.
PRODUCTION_ENV = {"DJANGO_DEBUG": "0", "DJANGO_HTTPS": "1", "DJANGO_ALLOWED_HOSTS": "faas.example.com"}


def _env(**values: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FAAS_"))}
    env.update({"PYTHONPATH": str(REPO), "DJANGO_SETTINGS_MODULE": "faas_site.settings"})
    env.update({k: v for k, v in values.items() if v is not None})
    return env


def _manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_debug_off_without_a_secret_key_refuses_to_start_with_a_clear_message():
    refused = _manage("check", env=_env(DJANGO_DEBUG="0"))
    assert refused.returncode != 0
    assert "ImproperlyConfigured" in refused.stderr
    assert "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off" in refused.stderr
    web = subprocess.run([sys.executable, "-c", "import faas_site.wsgi"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)  # the web server's entry point, DEBUG off by default
    assert web.returncode != 0 and "DJANGO_SECRET_KEY is not set" in web.stderr
    assert _manage("check", env=_env(DJANGO_DEBUG="1")).returncode == 0  # local development keeps working
    assert _manage("check", env=_env(DJANGO_SECRET_KEY=secrets.token_urlsafe(50))).returncode == 0


def test_check_deploy_is_clean_with_the_documented_production_environment():
    checked = _manage("check", "--deploy", "--fail-level", "WARNING",
                      env=_env(**PRODUCTION_ENV, DJANGO_SECRET_KEY=secrets.token_urlsafe(50)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout
    without_https = _manage("check", "--deploy", "--fail-level", "WARNING",
                            env=_env(**{**PRODUCTION_ENV, "DJANGO_HTTPS": "0"},
                                     DJANGO_SECRET_KEY=secrets.token_urlsafe(50)))
    assert without_https.returncode != 0  # the check is not vacuous: plain HTTP is flagged
    for check in ("W004", "W008", "W012", "W016"):
        assert check in without_https.stderr + without_https.stdout


def test_https_mode_redirects_plain_http_and_sends_hsts_and_secure_cookies(stack):
    stack.extra_env.update(PRODUCTION_ENV, DJANGO_ALLOWED_HOSTS="127.0.0.1")
    port = free_port()
    web = stack.spawn("web-https", [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1",
                                    "--no-control-socket", "faas_site.wsgi"])
    url = f"http://127.0.0.1:{port}"

    def answers():
        assert web.alive(), web.output()
        try:
            return requests.get(url + "/admin/login/", allow_redirects=False, timeout=2)
        except requests.RequestException:
            return None

    plain = wait_until(answers, timeout=60, message="gunicorn did not start")
    assert plain.status_code == 301 and plain.headers["Location"] == f"https://127.0.0.1:{port}/admin/login/"
    # Behind the TLS proxy, which says so in X-Forwarded-Proto.
    proxied = requests.get(url + "/admin/login/", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert proxied.status_code == 200
    assert proxied.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    csrf_cookie = next(c for c in proxied.cookies if c.name == "csrftoken")
    assert csrf_cookie.secure
