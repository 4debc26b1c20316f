from django.urls import path

from learning import api

urlpatterns = [
    path("projects/<int:pk>/model/", api.model_summary, name="api-model-summary"),
]
