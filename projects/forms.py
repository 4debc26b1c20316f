"""Forms of the projects pages."""
from __future__ import annotations

from typing import Any

from django import forms

from projects.models import Dataset, Project, TaskType, Team
from projects.taxonomy import LabelSpec, parse_label_lines


class ProjectCreateForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)  # the user's teams: __init__
    name = forms.CharField(max_length=200)
    task_type = forms.ChoiceField(choices=TaskType.choices, initial=TaskType.SINGLE_LABEL)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    guidelines = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                                 help_text="What annotators read before they label.")
    labels = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": "Yes | the sentence overrules a precedent\nNo"}),
        help_text="One label per line; optionally 'name | description'. Shortcut keys 1–9 are given in order.",
        required=False,
    )

    def __init__(self, *args: Any, teams: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        team = self.fields["team"]
        assert isinstance(team, forms.ModelChoiceField)
        team.queryset = teams

    def clean_labels(self) -> list[LabelSpec]:
        specs = parse_label_lines(self.cleaned_data["labels"])
        if not specs and self.data.get("task_type") != TaskType.SPAN:
            # A classification project without labels can still start: an
            # import with a label column (and "add unknown labels") fills it.
            return []
        return specs


class ProjectSettingsForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "description", "guidelines", "acquisition_strategy", "overlap"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2}), "guidelines": forms.Textarea(attrs={"rows": 6})}


class LabelAddForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=2000, required=False)
    expected_version = forms.IntegerField(widget=forms.HiddenInput)


class LabelEditForm(forms.Form):
    """One operation on one label of the taxonomy editor."""

    OPS = [("edit", "Save"), ("merge", "Merge into this label"), ("split", "Split"), ("deprecate", "Deprecate"),
           ("restore", "Restore")]
    key = forms.CharField(max_length=32)
    op = forms.ChoiceField(choices=OPS)
    expected_version = forms.IntegerField(widget=forms.HiddenInput)
    name = forms.CharField(max_length=100, required=False)
    description = forms.CharField(max_length=2000, required=False,
                                  widget=forms.Textarea(attrs={"rows": 2}))
    colour = forms.CharField(max_length=7, required=False, widget=forms.TextInput(attrs={"type": "color"}))
    shortcut = forms.CharField(max_length=1, required=False, strip=False)
    merged = forms.MultipleChoiceField(required=False, label="Labels to merge into this one")
    into = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                           label="New labels (one per line, 'name | description')")

    def __init__(self, *args: Any, keys: list[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choice_field(self, "merged").choices = keys or []


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text="CSV with a header row, JSONL (one object per line) or JSON (an array of objects)."
    )


class ColumnMapForm(forms.Form):
    text_column = forms.ChoiceField(label="Text column")
    label_column = forms.ChoiceField(label="Label column", required=False,
                                     help_text="Rows with a label become annotations and start training.")
    id_column = forms.ChoiceField(label="ID column", required=False, help_text="Your own id for each row.")
    add_unknown_labels = forms.BooleanField(
        required=False, label="Add labels that are not in the taxonomy yet",
        help_text="Unticked, a row with an unknown label is an error and nothing is imported.",
    )

    def __init__(self, *args: Any, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        columns = [(c, c) for c in dataset.columns]
        _choice_field(self, "text_column").choices = columns
        _choice_field(self, "label_column").choices = [("", "— none (unlabelled) —"), *columns]
        _choice_field(self, "id_column").choices = [("", "— none —"), *columns]


def _choice_field(form: forms.Form, name: str) -> forms.ChoiceField:
    """A form's own copy of a declared choice field, typed so that its choices can be set."""
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    return field


def taxonomy_editor_context(project: Project, form: LabelAddForm | None = None) -> dict[str, Any]:
    """What the taxonomy editor (settings page) shows: the current version, the add form, recent versions."""
    taxonomy = project.current_taxonomy()
    return {
        "project": project,
        "taxonomy": taxonomy,
        "label_form": form or LabelAddForm(initial={"expected_version": taxonomy.number}),
        "versions": project.taxonomy_versions.all()[:10],
    }


class PersonalTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Which script or machine uses it, e.g. “nightly import”.")
    expires_in_days = forms.TypedChoiceField(
        label="Expires", coerce=int, empty_value=None, initial="90",
        choices=[("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year"), ("", "never")],
        required=False,
    )
