"""What personal tokens (projects.tokens) and project API keys (serving.keys) share: how a key is made,
hashed and read from the Authorization header. Only the hash of a key is ever stored."""
from __future__ import annotations

import hashlib
import secrets

from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header
from rest_framework.request import Request


def hash_key(key: str) -> str:
    # Keys carry 256 random bits: a fast hash is enough (no dictionary to attack), and it keeps
    # authentication well under a millisecond.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(kind: str) -> tuple[str, str]:
    """(prefix, key) for a new `<kind>_<prefix>_<secret>` key; the prefix finds the row, the secret is 256 bits."""
    prefix = secrets.token_hex(4)
    return prefix, f"{kind}_{prefix}_{secrets.token_urlsafe(32)}"


def presented_key(request: Request, keyword: str, *, what: str) -> str | None:
    """The key after `Authorization: <keyword> `, None when the header uses another scheme; a malformed one is a
    401 naming `what` ("token", "API key")."""
    header = get_authorization_header(request).split()
    if not header or header[0].lower() != keyword.lower().encode():
        return None
    if len(header) != 2:
        raise exceptions.AuthenticationFailed(f"Invalid {keyword} header: give `{keyword} <key>`.")
    try:
        return header[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed(f"Invalid {what}.") from None
