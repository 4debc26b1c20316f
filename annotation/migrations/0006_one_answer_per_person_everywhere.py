"""One answer per person, item and taxonomy version on every database (see Annotation.Meta).

The constraint before had NULLS NOT DISTINCT, which Django leaves out where the database cannot
say it (SQLite, the first look; PostgreSQL before 15): there a second submit for an item added a
second answer from the same person. Such duplicates are folded first, the newest answer kept, as
a second submit would have done with the constraint in place.
"""
from django.conf import settings
from django.db import migrations, models
from django.db.models import Exists, OuterRef, Q


def keep_the_newest_answer(apps, schema_editor):
    """Delete every answer that has a newer one in its group: one statement per kind of group."""
    Annotation = apps.get_model("annotation", "Annotation")
    groups = (
        (("example", "annotator", "taxonomy_version"), Q(annotator__isnull=False)),
        (("example", "taxonomy_version"), Q(annotator__isnull=True, source="import")),
    )
    for fields, condition in groups:
        newer = Annotation.objects.filter(
            condition,
            Q(created_at__gt=OuterRef("created_at")) | Q(created_at=OuterRef("created_at"), id__gt=OuterRef("id")),
            **{field: OuterRef(field) for field in fields},
        )
        Annotation.objects.filter(condition).filter(Exists(newer)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0005_review_decision_spans'),
        ('projects', '0009_span_data'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(keep_the_newest_answer, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name='annotation',
            name='one_annotation_per_annotator_per_example_per_version',
        ),
        migrations.AddConstraint(
            model_name='annotation',
            constraint=models.UniqueConstraint(condition=models.Q(('annotator__isnull', False)), fields=('example', 'annotator', 'taxonomy_version'), name='one_annotation_per_annotator_per_example_per_version'),
        ),
        migrations.AddConstraint(
            model_name='annotation',
            constraint=models.UniqueConstraint(condition=models.Q(('annotator__isnull', True), ('source', 'import')), fields=('example', 'taxonomy_version'), name='one_unattributed_import_per_example_per_version'),
        ),
    ]
