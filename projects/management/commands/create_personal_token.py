"""Create a personal API token for a user and print it (the only time it is shown)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from labelhub.errors import ActionError
from projects.tokens import create_personal_token


class Command(BaseCommand):
    help = "Create a personal API token (`Authorization: Token <key>`) for USER and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="which script or machine uses it")
        parser.add_argument("--days", type=int, default=None, help="expire after this many days (default: never)")

    def handle(self, *args: Any, username: str, name: str, days: int | None, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        try:
            _, key = create_personal_token(user, name=name, expires_in_days=days)
        except ActionError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(key)
