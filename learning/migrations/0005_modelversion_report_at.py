"""ModelVersion.report_at: the quality report becomes a job of its own, after the version is recorded.

Versions recorded before it carry their own report: they get report_at = created_at.
"""
from django.db import migrations, models
from django.db.models import F


def mark_existing_reports(apps, schema_editor):
    ModelVersion = apps.get_model("learning", "ModelVersion")
    ModelVersion.objects.update(report_at=F("created_at"))


class Migration(migrations.Migration):

    dependencies = [
        ("learning", "0004_examplescore_to_annotation"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="report_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(mark_existing_reports, migrations.RunPython.noop),
    ]
