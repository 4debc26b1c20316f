"""What `make serve` does before gunicorn starts: the production static pipeline must accept every file."""
from __future__ import annotations

from django.core.management import call_command
from django.test import override_settings


def test_collectstatic_with_the_production_storage_succeeds(tmp_path, client, alice):
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    with override_settings(STATIC_ROOT=tmp_path / "static", STORAGES=storages):
        # A vendored file pointing at a source map that is not shipped made this fail
        # and every page answer 500 with DEBUG off.
        call_command("collectstatic", interactive=False, verbosity=0)
        assert (tmp_path / "static" / "staticfiles.json").exists()
        client.force_login(alice)
        page = client.get("/")
        assert page.status_code == 200
        assert b"/static/vendor/htmx-2.0.11.min." in page.content  # hashed name from the manifest
