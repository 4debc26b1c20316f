"""Forms of the serving pages: threshold, API keys, webhooks."""
from __future__ import annotations

from typing import Any

from django import forms

from serving.models import ApiKey, ThresholdMode, WebhookEvent


class ThresholdForm(forms.Form):
    threshold_mode = forms.ChoiceField(choices=ThresholdMode.choices, widget=forms.RadioSelect,
                                       label="Automate predictions by")
    confidence_threshold = forms.FloatField(min_value=0, max_value=1, required=False, label="Confidence threshold",
                                            help_text="Inputs below it go to a person (0 to 1).",
                                            widget=forms.NumberInput(attrs={"step": "0.01"}))
    target_accuracy = forms.FloatField(min_value=50, max_value=100, required=False,
                                       label="Target accuracy of automated predictions (%)",
                                       help_text="LabelHub picks the lowest threshold whose automated answers reach "
                                       "it on cross-validated predictions.",
                                       widget=forms.NumberInput(attrs={"step": "0.5"}))

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("threshold_mode") == ThresholdMode.TARGET and data.get("target_accuracy") is None:
            self.add_error("target_accuracy", "Give a target accuracy, e.g. 95.")
        if data.get("threshold_mode") == ThresholdMode.CONFIDENCE and data.get("confidence_threshold") is None:
            self.add_error("confidence_threshold", "Give a threshold between 0 and 1, e.g. 0.8.")
        return data


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Who or what uses it, e.g. “ticket router”.")
    scopes = forms.MultipleChoiceField(choices=ApiKey.SCOPES, widget=forms.CheckboxSelectMultiple,
                                       initial=["predict"])


class WebhookForm(forms.Form):
    url = forms.URLField(max_length=500, label="URL", assume_scheme="https",
                         help_text="LabelHub POSTs signed JSON here.",
                         widget=forms.TextInput(attrs={"placeholder": "https://example.com/labelhub-hook",
                                                       "inputmode": "url"}))
    events = forms.MultipleChoiceField(choices=WebhookEvent.choices, widget=forms.CheckboxSelectMultiple,
                                       initial=[WebhookEvent.PREDICTION_ROUTED, WebhookEvent.PREDICTION_LABELLED])
