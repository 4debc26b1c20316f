"""Response headers against a hostile network and hostile content: CSP, HTTPS by default, no-store on secrets.

Before issue 10 no page sent a Content-Security-Policy, HSTS and the SSL redirect were off unless asked
for, pages showing secrets could be cached, and `check --deploy` warned with the documented settings.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User

from serving.models import WebhookEndpoint

pytestmark = pytest.mark.django_db

# The production settings README.md documents ("Security"), less DATABASE_URL/REDIS_URL which
# check --deploy does not connect to.
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "k2V!x9s@Qm#4rT7wZp$1yLc&8uNf^3hJ6bD*0eGa-5iRo+Wq_E",
    "ALLOWED_HOSTS": "labelhub.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://labelhub.example.com",
    "SECURE_HSTS_PRELOAD": "1",
}


def _directives(header: str) -> dict[str, list[str]]:
    parts = [part.strip().split() for part in header.split(";") if part.strip()]
    return {part[0]: part[1:] for part in parts}


def _settings_under(env: dict[str, str], *names: str) -> dict[str, Any]:
    """The values of `names` in a fresh process whose environment is `env` (settings read it once)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "LABELHUB_", "DEBUG"))}
    code = ("import django, json; from django.conf import settings; django.setup(); "
            f"print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}, default=str))")
    full_env = {**clean, **env, "DJANGO_SETTINGS_MODULE": "labelhub.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=full_env, cwd=django_settings.BASE_DIR,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_it_sends_a_content_security_policy_without_inline_script(alice: User, login: Any) -> None:
    response = login(alice).get("/")
    policy = _directives(response["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert not any("unsafe-eval" in v for values in policy.values() for v in values)
    # The one inline allowance is style attributes (per-label colours); never script.
    assert [d for d, values in policy.items() if "'unsafe-inline'" in values] == ["style-src-attr"]


def test_it_sends_the_policy_on_the_login_page_and_the_api_docs(alice: User, login: Any) -> None:
    from django.test import Client

    assert "script-src 'self'" in Client().get("/accounts/login/")["Content-Security-Policy"]
    docs = login(alice).get("/api/docs/")
    assert docs.status_code == 200
    # The split view serves Swagger UI's start-up script as a file, not inline.
    assert not re.search(rb"<script(?![^>]*\bsrc=)[^>]*>\s*\S", docs.content)


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"\s(on[a-z]+|hx-on[:-][\w:-]*)\s*=", re.I)
JS_URL = re.compile(r"(href|src|action)\s*=\s*[\"']\s*javascript:", re.I)


def test_no_template_has_an_inline_script_or_event_handler() -> None:
    base = django_settings.BASE_DIR
    skipped = {".venv", "staticfiles", "node_modules"}
    templates = [p for p in base.rglob("*.html") if not skipped.intersection(p.parts)]
    assert len(templates) > 30
    offenders = []
    for path in templates:
        text = path.read_text(encoding="utf-8")
        for pattern in (INLINE_SCRIPT, INLINE_HANDLER, JS_URL):
            offenders += [f"{path.relative_to(base)}: {m.group(0).strip()}" for m in pattern.finditer(text)]
    assert offenders == []


def test_htmx_is_configured_to_need_neither_eval_nor_an_injected_style(alice: User, login: Any) -> None:
    page = login(alice).get("/").content.decode()
    config = json.loads(re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", page).group(1))
    assert config == {"allowEval": False, "includeIndicatorStyles": False}


def test_it_keeps_pages_that_show_secrets_out_of_every_cache(alice: User, project: Any, login: Any) -> None:
    client = login(alice)
    created = client.post("/accounts/token/", {"name": "cli", "expires_in_days": "30"})
    assert b"lhp_" in created.content
    key_page = client.post(f"/projects/{project.pk}/api-keys/", {"name": "router", "scopes": ["predict"]})
    assert b"new-api-key" in key_page.content
    WebhookEndpoint.objects.create(project=project, url="https://hooks.example.com/x", secret="s3cret",
                                   events=["prediction.routed"])
    webhooks = client.get(f"/projects/{project.pk}/webhooks/")
    assert b"s3cret" in webhooks.content
    for response in (created, client.get("/accounts/token/"), key_page, client.get(f"/projects/{project.pk}/api-keys/"),
                     webhooks):
        assert "no-store" in response["Cache-Control"]


def test_https_is_the_default_without_debug() -> None:
    values = _settings_under(PRODUCTION_ENV, "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE",
                             "CSRF_COOKIE_SECURE", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "EMAIL_BACKEND")
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] >= 365 * 24 * 3600
    assert values["SESSION_COOKIE_SECURE"] is values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"


def test_a_plain_http_intranet_opts_out_of_https() -> None:
    values = _settings_under({**PRODUCTION_ENV, "LABELHUB_PLAIN_HTTP": "1"}, "SECURE_SSL_REDIRECT",
                             "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE")
    assert values == {"SECURE_SSL_REDIRECT": False, "SECURE_HSTS_SECONDS": 0, "SESSION_COOKIE_SECURE": False}


def test_debug_prints_mail_to_the_console() -> None:
    values = _settings_under({"DEBUG": "1"}, "EMAIL_BACKEND", "SECURE_SSL_REDIRECT")
    assert values == {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend", "SECURE_SSL_REDIRECT": False}


def test_check_deploy_is_clean_with_the_documented_production_settings() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "LABELHUB_", "DEBUG"))}
    out = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], env={**clean, **PRODUCTION_ENV},
                         cwd=django_settings.BASE_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "System check identified no issues (0 silenced)." in out.stdout, out.stdout + out.stderr


def test_only_the_staff_job_pages_allow_inline_styles(alice: User, login: Any) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client = login(alice)
    page = client.get("/admin/jobs/queues/0/")
    assert page.status_code == 200
    policy = _directives(page["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'", "'unsafe-inline'"]
    assert _directives(client.get("/")["Content-Security-Policy"])["style-src"] == ["'self'"]
