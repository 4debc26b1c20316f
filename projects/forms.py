"""Forms of the projects pages."""
from __future__ import annotations

from typing import Any

from django import forms
from django.http import QueryDict

from projects import importing, imports, spanformats
from projects.models import Dataset, Project, TaskType, Team
from projects.taxonomy import LabelSpec, parse_label_lines


class ProjectCreateForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)  # the user's teams: __init__
    name = forms.CharField(max_length=200)
    task_type = forms.ChoiceField(choices=TaskType.choices, initial=TaskType.SINGLE_LABEL)
    language = forms.ChoiceField(
        choices=list(spanformats.LANGUAGES.items()), initial="en", required=False,
        help_text="Span tagging: the language of the texts; they are split into tokens with its rules at import.",
    )
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

    def clean_language(self) -> str:
        # Only span projects tokenize; a classification project keeps the default.
        return self.cleaned_data.get("language") or "en"

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
        help_text="CSV or other delimited text (comma, semicolon, tab or pipe; any encoding), Excel .xlsx, "
                  "JSONL (one object per line) or JSON (an array of objects)."
    )
    SPAN_HELP = (
        "Texts to label: CSV, .xlsx, JSONL or JSON with a text column (split into tokens in the project's "
        "language). Texts with entities: JSONL with {\"text\", \"spans\": [{\"start\", \"end\", \"label\"}]} "
        "(character offsets on token boundaries), or pre-tokenized {\"tokens\", \"tags\"} in IOB2, IOB1, "
        "BILOU, IOBES or IO, or a CoNLL file (.conll or .txt: a token and its tag on each line, the tag last, a "
        "blank line between sentences, -DOCSTART- lines ignored)."
    )
    ACCEPT = ".csv,.tsv,.txt,.xlsx,.jsonl,.ndjson,.json"

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accept = self.ACCEPT + (",.conll" if project.is_span else "")
        if project.is_span:
            self.fields["file"].help_text = self.SPAN_HELP


ROLE_SHOWN, ROLE_HIDDEN, ROLE_DROPPED = "shown", "hidden", "dropped"
COLUMN_ROLES = [(ROLE_SHOWN, "Metadata shown to annotators"), (ROLE_HIDDEN, "Kept, hidden from annotators"),
                (ROLE_DROPPED, "Dropped")]
CREATE_LABEL = "+"


class ColumnMapForm(forms.Form):
    """The upload page's second step: how the file is read, what each column is, what each label becomes.

    Beside the declared fields, one `role_<i>` per column of the file (shown / hidden / dropped, for the
    columns that are not text, label or id) and one `label_<i>` per label of the file that the taxonomy
    lacks (create it, or map it to a label of the taxonomy).
    """

    encoding = forms.ChoiceField(label="Encoding", required=False)
    delimiter = forms.ChoiceField(label="Delimiter", required=False,
                                  choices=[(k, v) for k, v in importing.DELIMITERS.items()])
    sheet = forms.ChoiceField(label="Sheet", required=False)
    text_column = forms.ChoiceField(label="Text column")
    label_column = forms.ChoiceField(label="Label column", required=False,
                                     help_text="Rows with a label become annotations and start training. The "
                                               "label column is never shown to annotators.")
    id_column = forms.ChoiceField(label="ID column", required=False, help_text="Your own id for each row.")
    add_unknown_labels = forms.BooleanField(
        required=False, label="Create every label of the file that the taxonomy lacks",
        help_text="Unticked, each label the taxonomy lacks is created or mapped as chosen below; a row whose "
                  "label is left unmapped is an error, and nothing is imported.",
    )

    def __init__(self, *args: Any, dataset: Dataset, labels_found: dict[str, int] | None = None,
                 taxonomy_labels: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dataset = dataset
        columns = [(c, c) for c in dataset.columns]
        if dataset.project.is_span:
            self.fields["text_column"].label = "Text (or tokens) column"
            self.fields["text_column"].help_text = ("A text is split into tokens in the project's language; a list "
                                                    "of tokens is kept as it is.")
            self.fields["label_column"].label = "Entities column"
            self.fields["label_column"].help_text = (
                'Character spans ([{"start", "end", "label"}] on the text) or one tag per token (IOB2, IOB1, '
                "BILOU, IOBES or IO). Rows with entities become annotations; a row with none (all O, or []) is "
                "labelled \"no entity\". None: the texts are imported for labelling.")
        _choice_field(self, "text_column").choices = columns
        _choice_field(self, "label_column").choices = [("", "— none (unlabelled) —"), *columns]
        _choice_field(self, "id_column").choices = [("", "— none —"), *columns]
        encodings = dict(importing.ENCODINGS)
        for codec in (dataset.sniffed.get("encoding", ""), dataset.encoding):
            if codec and codec not in encodings:
                encodings[codec] = codec
        _choice_field(self, "encoding").choices = list(encodings.items())
        _choice_field(self, "sheet").choices = [(s, s) for s in dataset.sniffed.get("sheets", [])]
        if dataset.file_format != "csv":
            del self.fields["delimiter"]
        if dataset.file_format == "xlsx":
            del self.fields["encoding"]
        else:
            del self.fields["sheet"]
        label_column = self._value("label_column")
        hidden = set(imports.default_hidden_columns(dataset.columns, label_column=label_column))
        self.role_fields: list[tuple[str, str]] = []
        for i, column in enumerate(dataset.columns):
            name = f"role_{i}"
            self.fields[name] = forms.ChoiceField(choices=COLUMN_ROLES, required=False, label=column,
                                                  initial=ROLE_HIDDEN if column in hidden else ROLE_SHOWN)
            self.role_fields.append((name, column))
        taxonomy_labels = taxonomy_labels or []
        self.labels_found = labels_found or {}
        self.label_fields: list[tuple[str, str, int]] = []
        unknown = [(found, count) for found, count in self.labels_found.items() if found not in taxonomy_labels]
        for i, (found, count) in enumerate(unknown):
            name = f"label_{i}"
            choices = [(CREATE_LABEL, f"create the label “{found}”"),
                       *[(existing, f"→ {existing}") for existing in taxonomy_labels],
                       ("", "— leave unmapped (its rows are errors) —")]
            initial = dataset.label_mapping.get(found, CREATE_LABEL if not taxonomy_labels else "")
            if initial == found:
                initial = CREATE_LABEL
            self.fields[name] = forms.ChoiceField(choices=choices, required=False, label=found, initial=initial)
            self.label_fields.append((name, found, count))
        if self.is_bound:
            # A role or label the posted page did not show yet (the columns or the label column changed
            # with this post) takes its default, in the form shown and in the import.
            missing = [(name, self.fields[name].initial) for name in self.fields
                       if name.startswith(("role_", "label_")) and name != "label_column" and name not in self.data]
            if missing:
                data = QueryDict(mutable=True)
                data.update(self.data)
                for name, initial in missing:
                    data[name] = initial or ""
                self.data = data

    def _value(self, name: str) -> str:
        if self.is_bound:
            return str(self.data.get(name, "") or "")
        return str(self.initial.get(name, "") or "")

    def bound_roles(self) -> list[tuple[forms.BoundField, str]]:
        return [(self[name], column) for name, column in self.role_fields]

    def bound_labels(self) -> list[tuple[forms.BoundField, str, int]]:
        return [(self[name], found, count) for name, found, count in self.label_fields]

    def mapping(self) -> dict[str, Any]:
        """The cleaned choices as `imports.configure_import` takes them."""
        data = self.cleaned_data
        mapped = {data["text_column"], data.get("label_column") or "", data.get("id_column") or ""}
        roles = {column: data.get(name) or ROLE_SHOWN for name, column in self.role_fields}
        label_mapping = {}
        for name, found, _ in self.label_fields:
            target = data.get(name) or ""
            if target == CREATE_LABEL:
                label_mapping[found] = found
            elif target:
                label_mapping[found] = target
        return {
            "text_column": data["text_column"], "label_column": data.get("label_column") or "",
            "id_column": data.get("id_column") or "", "add_unknown_labels": data.get("add_unknown_labels", False),
            "hidden_columns": [c for c, role in roles.items() if role == ROLE_HIDDEN and c not in mapped],
            "dropped_columns": [c for c, role in roles.items() if role == ROLE_DROPPED and c not in mapped],
            "label_mapping": label_mapping,
        }


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
