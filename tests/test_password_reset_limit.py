"""The password-reset form sends at most LABELHUB_PASSWORD_RESET_LIMIT mails an hour from one address and for one
e-mail address; over it, 429 and no mail, with the same page whether the address has an account or not."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse


@pytest.fixture
def limit(settings):
    settings.PASSWORD_RESET_LIMIT = 3
    return 3


def ask(email: str, address: str = "203.0.113.7"):
    return Client(REMOTE_ADDR=address).post(reverse("password_reset"), {"email": email})


def test_one_address_gets_the_limit_then_429_and_no_mail(alice, limit, mailoutbox):
    alice.email = "alice@example.com"
    alice.save()
    for _ in range(limit):
        assert ask("alice@example.com").status_code == 302
    assert len(mailoutbox) == limit
    response = ask("alice@example.com")
    assert response.status_code == 429 and "No mail was sent" in response.content.decode()
    assert len(mailoutbox) == limit
    # Other e-mail addresses from the same address are refused too (one flooder, many inboxes).
    assert ask("someone@example.com").status_code == 429
    # Someone else, elsewhere, is not held up.
    assert ask("bob@example.com", address="198.51.100.9").status_code == 302


def test_one_inbox_is_not_flooded_from_many_addresses(alice, limit, mailoutbox):
    alice.email = "alice@example.com"
    alice.save()
    for i in range(limit):
        assert ask("Alice@Example.com ", address=f"198.51.100.{i + 1}").status_code == 302
    assert ask("alice@example.com", address="198.51.100.200").status_code == 429
    assert len(mailoutbox) == limit


def test_the_answer_does_not_tell_whether_an_account_exists(alice, limit, mailoutbox):
    alice.email = "alice@example.com"
    alice.save()
    known = [ask("alice@example.com", address="192.0.2.1") for _ in range(limit + 1)]
    unknown = [ask("nobody@example.com", address="192.0.2.2") for _ in range(limit + 1)]
    assert [r.status_code for r in known] == [r.status_code for r in unknown] == [302] * limit + [429]
    assert known[-1].content.split(b"<main")[1] == unknown[-1].content.split(b"<main")[1]
    assert len(mailoutbox) == limit  # mails only for the account
