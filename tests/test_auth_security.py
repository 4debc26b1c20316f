"""Accounts against a hostile user: password guessing, password change and reset, personal tokens.

Each test here failed before issue 10: 100 wrong passwords then the right one logged in (the admin
login too), personal tokens were unthrottled and stored in plaintext, shown on every visit, with no
expiry or revoke, and there was no password change or reset.
"""
from __future__ import annotations

import importlib
import re
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.apps import apps as django_apps
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from projects import tokens
from projects.models import PersonalToken

pytestmark = pytest.mark.django_db

PASSWORD = "alice-password-123"


def _guess(client: Client, url: str, username: str, password: str, **extra: Any) -> Any:
    return client.post(url, {"username": username, "password": password}, **extra)


# --- A. Password guessing ---------------------------------------------------------------------------------------


def test_it_locks_a_username_and_address_out_after_five_wrong_passwords(alice: User) -> None:
    client = Client()
    answers = [_guess(client, "/accounts/login/", "alice", "wrong-guess-000").status_code for _ in range(5)]
    assert answers == [200, 200, 200, 200, 429]
    response = _guess(client, "/accounts/login/", "alice", PASSWORD)
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert b"15 minutes" in response.content
    assert "_auth_user_id" not in client.session


def test_it_locks_the_admin_login_out_too(alice: User) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client = Client()
    for _ in range(5):
        _guess(client, "/admin/login/", "alice", "wrong-guess-000")
    response = _guess(client, "/admin/login/", "alice", PASSWORD)
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_it_keeps_the_same_user_able_to_log_in_from_another_address(alice: User) -> None:
    for _ in range(6):
        _guess(Client(), "/accounts/login/", "alice", "wrong-guess-000", REMOTE_ADDR="203.0.113.9")
    response = _guess(Client(), "/accounts/login/", "alice", PASSWORD, REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 302


def test_it_lets_the_user_in_again_after_the_cool_off(alice: User) -> None:
    client = Client()
    for _ in range(5):
        _guess(client, "/accounts/login/", "alice", "wrong-guess-000")
    assert _guess(client, "/accounts/login/", "alice", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert _guess(client, "/accounts/login/", "alice", PASSWORD).status_code == 302


def test_it_counts_the_address_the_https_proxy_saw_not_one_the_client_chose(alice: User, settings: Any) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    for n in range(5):
        # A guesser rotating the part of X-Forwarded-For it controls; the proxy appended the last entry.
        _guess(Client(), "/accounts/login/", "alice", "wrong-guess-000", REMOTE_ADDR="10.0.0.2",
               HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 203.0.113.9")
    response = _guess(Client(), "/accounts/login/", "alice", PASSWORD, REMOTE_ADDR="10.0.0.2",
                      HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.9")
    assert response.status_code == 429


def test_it_throttles_personal_token_requests_per_user(alice: User, api_client: Any, settings: Any) -> None:
    settings.USER_API_RATE = "3/min"
    client = api_client(alice)
    answers = [client.get("/api/v1/projects/").status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]


def test_it_throttles_personal_tokens_on_endpoints_that_also_take_api_keys(
    alice: User, project: Any, api_client: Any, settings: Any,
) -> None:
    settings.USER_API_RATE = "2/min"
    client = api_client(alice)
    answers = [client.get(f"/api/v1/projects/{project.pk}/datasets/").status_code for _ in range(3)]
    assert answers == [200, 200, 429]


# --- B. Password change and reset ----------------------------------------------------------------------------------


def test_it_changes_a_password(alice: User, login: Any) -> None:
    client = login(alice)
    response = client.post("/accounts/password/change/", {
        "old_password": PASSWORD,
        "new_password1": "a-much-longer-passphrase", "new_password2": "a-much-longer-passphrase",
    })
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a-much-longer-passphrase")


def test_it_refuses_a_new_password_shorter_than_twelve_characters(alice: User, login: Any) -> None:
    client = login(alice)
    response = client.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": "Kx9#tq2!vB", "new_password2": "Kx9#tq2!vB",
    })
    assert response.status_code == 200
    assert b"at least 12 characters" in response.content
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_it_mails_a_reset_link_that_sets_a_new_password(alice: User) -> None:
    alice.email = "alice@example.com"
    alice.save()
    client = Client()
    assert client.get("/accounts/login/").content.count(b"/accounts/password/reset/") == 1
    response = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", mail.outbox[0].body)
    assert link is not None
    form_page = client.get(link.group(1), follow=True)
    assert b"Choose a new password" in form_page.content
    response = client.post(form_page.redirect_chain[-1][0], {
        "new_password1": "a-much-longer-passphrase", "new_password2": "a-much-longer-passphrase",
    })
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a-much-longer-passphrase")


def test_it_links_password_change_and_tokens_from_the_header(alice: User, login: Any) -> None:
    page = login(alice).get("/")
    assert b'href="/accounts/password/change/"' in page.content
    assert b'href="/accounts/token/"' in page.content


# --- C. Personal tokens ----------------------------------------------------------------------------------------------


def test_it_shows_a_new_token_once_and_stores_only_its_hash(alice: User, login: Any) -> None:
    client = login(alice)
    response = client.post("/accounts/token/", {"name": "nightly import", "expires_in_days": "30"})
    assert response.status_code == 200
    key = re.search(rb'id="api-token">(lhp_[^<]+)<', response.content).group(1).decode()
    row = PersonalToken.objects.get(user=alice)
    assert row.hashed_key == tokens.hash_key(key) and key not in row.hashed_key
    assert row.expires_at is not None and row.expires_at - timezone.now() > timedelta(days=29)
    again = client.get("/accounts/token/")
    assert key.encode() not in again.content
    assert b"nightly import" in again.content
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/projects/").status_code == 200


def test_it_refuses_a_revoked_token(alice: User, login: Any) -> None:
    row, key = tokens.create_personal_token(alice, name="script", expires_in_days=None)
    response = login(alice).post(f"/accounts/token/{row.pk}/revoke/")
    assert response.status_code == 302
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    answer = api.get("/api/v1/projects/")
    assert answer.status_code == 401
    assert "revoked" in answer.json()["detail"]


def test_it_refuses_an_expired_token(alice: User) -> None:
    row, key = tokens.create_personal_token(alice, name="script", expires_in_days=1)
    PersonalToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    answer = api.get("/api/v1/projects/")
    assert answer.status_code == 401
    assert "expired" in answer.json()["detail"]


def test_it_refuses_a_token_of_a_deactivated_user(alice: User) -> None:
    _, key = tokens.create_personal_token(alice, name="script", expires_in_days=None)
    alice.is_active = False
    alice.save()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/projects/").status_code == 401


def test_it_lets_no_one_else_revoke_a_token(alice: User, charlie: User, login: Any) -> None:
    row, _ = tokens.create_personal_token(alice, name="script", expires_in_days=None)
    assert login(charlie).post(f"/accounts/token/{row.pk}/revoke/").status_code == 404
    row.refresh_from_db()
    assert row.revoked_at is None


def test_it_refuses_a_nameless_token(alice: User, login: Any) -> None:
    response = login(alice).post("/accounts/token/", {"name": "  ", "expires_in_days": ""})
    assert response.status_code == 400
    assert not PersonalToken.objects.exists()


def test_it_hashes_the_plaintext_tokens_of_before(alice: User) -> None:
    old = Token.objects.create(user=alice)
    migration = importlib.import_module("projects.migrations.0007_personal_token")
    migration.hash_plaintext_tokens(django_apps, None)
    assert not Token.objects.exists()
    row = PersonalToken.objects.get(user=alice)
    assert old.key not in (row.hashed_key, row.name, row.prefix + "x" * 40)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {old.key}")
    assert api.get("/api/v1/projects/").status_code == 200


def test_the_command_prints_a_working_token_once(alice: User) -> None:
    out = StringIO()
    call_command("create_personal_token", "alice", "--name", "cron", "--days", "7", stdout=out)
    key = out.getvalue().strip()
    row = PersonalToken.objects.get(user=alice, name="cron")
    assert row.hashed_key == tokens.hash_key(key) and row.expires_at is not None
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/projects/").status_code == 200


def test_staff_revoke_personal_tokens_in_the_admin_and_see_no_plaintext_tokens(alice: User, login: Any) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    row, key = tokens.create_personal_token(alice, name="script", expires_in_days=None)
    client = login(alice)
    assert b"/admin/authtoken/" not in client.get("/admin/").content
    listing = client.get("/admin/projects/personaltoken/")
    assert listing.status_code == 200 and key.encode() not in listing.content
    client.post("/admin/projects/personaltoken/", {"action": "revoke", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert row.revoked_at is not None
