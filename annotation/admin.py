from django.contrib import admin

from annotation.models import Annotation


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = ["example", "annotator", "taxonomy_version", "label_keys", "source", "created_at"]
    list_filter = ["source"]
    raw_id_fields = ["example"]
