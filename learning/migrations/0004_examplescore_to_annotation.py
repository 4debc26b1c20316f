"""ExampleScore becomes the annotation queue's table; serving's tables move to the serving app.

No table is created or dropped: ExampleScore keeps its table (`learning_examplescore`)
and trades its foreign key to ModelVersion for the version's number, so the
annotation layer needs nothing of the learning layer. The serving rows keep their
tables too; only Django's idea of which app owns them changes.
"""
from django.db import migrations, models


def copy_numbers(apps, schema_editor):
    ExampleScore = apps.get_model("learning", "ExampleScore")
    ModelVersion = apps.get_model("learning", "ModelVersion")
    numbers = dict(ModelVersion.objects.values_list("id", "number"))
    for version_id, number in numbers.items():
        ExampleScore.objects.filter(model_version_id=version_id).update(model_version_number=number)


SERVING_MODELS = ["WebhookDelivery", "WebhookEndpoint", "Prediction", "ApiKey", "DriftReference",
                  "ModelPromotion", "ServingConfig"]


class Migration(migrations.Migration):

    dependencies = [
        ("learning", "0003_serving"),
    ]

    operations = [
        migrations.AddField(
            model_name="examplescore",
            name="model_version_number",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(copy_numbers, migrations.RunPython.noop),
        migrations.RemoveField(model_name="examplescore", name="model_version"),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ExampleScore")]
            + [migrations.DeleteModel(name=name) for name in SERVING_MODELS],
        ),
    ]
