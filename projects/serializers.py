"""Explicit serializers of the projects REST API."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from projects.models import Dataset, Label, Project, TaxonomyVersion


class LabelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Label
        fields = ["key", "name", "description", "colour", "shortcut", "is_deprecated"]


class TaxonomyVersionSerializer(serializers.ModelSerializer):
    labels = LabelSerializer(many=True, read_only=True)

    class Meta:
        model = TaxonomyVersion
        fields = ["number", "created_at", "changelog", "labels"]


class TaxonomyVersionSummarySerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", default=None)

    class Meta:
        model = TaxonomyVersion
        fields = ["number", "created_at", "created_by", "changelog"]


class TaxonomyChangeSerializer(serializers.Serializer):
    change = serializers.ChoiceField(choices=["added", "removed", "renamed", "edited", "deprecated", "restored"])
    key = serializers.CharField()
    name = serializers.CharField()
    # `fields` and `label` below are API fields, not the Serializer/Field attributes of the same
    # name that the stubs see: DRF's metaclass moves declared fields off the class.
    fields = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="Per changed field: {'from': …, 'to': …}.")


class TaxonomyDiffSerializer(serializers.Serializer):
    from_version = serializers.IntegerField()
    to_version = serializers.IntegerField()
    changelog = serializers.ListField(child=serializers.CharField(),
                                      help_text="Changelog lines of the versions after from_version up to to_version.")
    changes = TaxonomyChangeSerializer(many=True)


class ProjectSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.name")
    taxonomy = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["id", "name", "team", "task_type", "description", "guidelines", "created_at", "taxonomy"]

    def get_taxonomy(self, project: Project) -> dict[str, Any]:
        return TaxonomyVersionSerializer(project.current_taxonomy()).data


class DatasetSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "name", "source", "status", "file_format", "encoding", "delimiter", "sheet", "text_column",
                  "label_column", "id_column", "hidden_columns", "dropped_columns", "label_mapping", "total_rows",
                  "imported_count", "duplicate_count", "labelled_count", "error_count", "errors", "error_groups",
                  "labels_found", "progress", "created_at", "finished_at"]

    def get_progress(self, dataset: Dataset) -> dict[str, Any]:
        return dataset.progress()


class ExampleInSerializer(serializers.Serializer):
    text = serializers.CharField(allow_blank=True, trim_whitespace=False, required=False,
                                 help_text="The text to label. Empty text is rejected. Span projects may send "
                                           "`tokens` instead.")
    label = serializers.JSONField(  # type: ignore[assignment]  # an API field, as above
        required=False, help_text="A label name; for multi-label projects a list of names.")
    labels = serializers.ListField(child=serializers.CharField(), required=False,
                                   help_text="Label names (multi-label projects).")
    external_id = serializers.CharField(required=False, allow_blank=True, max_length=255)
    metadata = serializers.DictField(required=False)
    spans = serializers.ListField(child=serializers.JSONField(), required=False,
                                  help_text='Span projects: entities as [{"start", "end", "label"}] character '
                                            "offsets on token boundaries of `text`.")
    tokens = serializers.ListField(child=serializers.JSONField(), required=False,
                                   help_text="Span projects: a pre-tokenized text (the text is the tokens joined "
                                             "by single spaces).")
    tags = serializers.ListField(child=serializers.JSONField(), required=False,
                                 help_text="Span projects: one tag per token, in IOB2, IOB1, BILOU, IOBES or IO.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "text" not in attrs and "tokens" not in attrs:
            raise serializers.ValidationError("Each example needs a text (span projects: a text or tokens).")
        return attrs


class BulkImportSerializer(serializers.Serializer):
    examples = ExampleInSerializer(many=True)
    add_unknown_labels = serializers.BooleanField(default=False)
    hidden_metadata = serializers.ListField(child=serializers.CharField(max_length=200), required=False,
                                            default=list,
                                            help_text="Metadata keys kept but never shown to annotators.")

    def validate_examples(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not value:
            raise serializers.ValidationError("Send at least one example.")
        if len(value) > settings.BULK_IMPORT_MAX_ROWS:
            raise serializers.ValidationError(
                f"{len(value):,} examples; the limit is {settings.BULK_IMPORT_MAX_ROWS:,} per request."
            )
        return value


class FileImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV or other delimited text, Excel .xlsx, JSONL or JSON (array of "
                                           "objects).")
    text_column = serializers.CharField(default="text")
    label_column = serializers.CharField(required=False, allow_blank=True, default="")
    id_column = serializers.CharField(required=False, allow_blank=True, default="")
    add_unknown_labels = serializers.BooleanField(default=False,
                                                  help_text="Create the labels of the file that the taxonomy lacks.")
    encoding = serializers.CharField(required=False, allow_blank=True, default="", max_length=40,
                                     help_text="Text encoding (e.g. utf-8, cp1252, utf-16); default: detected.")
    delimiter = serializers.ChoiceField(choices=[("", "detect"), (",", ","), (";", ";"), ("\t", "tab"), ("|", "|")],
                                        required=False, allow_blank=True, default="",
                                        help_text="Delimiter of a CSV/TSV file; default: detected.")
    sheet = serializers.CharField(required=False, allow_blank=True, default="", max_length=255,
                                  help_text="Sheet of an .xlsx workbook; default: the first.")
    hidden_columns = serializers.ListField(
        child=serializers.CharField(), required=False, default=None, allow_null=True,
        help_text="Columns kept as metadata but never shown to annotators; default: label-like columns not "
                  "used as the label.")
    dropped_columns = serializers.ListField(child=serializers.CharField(), required=False, default=list,
                                            help_text="Columns not kept.")
