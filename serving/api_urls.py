from django.urls import path

from serving import api

urlpatterns = [
    path("projects/<int:pk>/predict", api.predict, name="api-predict"),
    # Every other endpoint ends in a slash, so clients add one: the same endpoint, not an HTML 404.
    path("projects/<int:pk>/predict/", api.predict_with_slash, name="api-predict-slash"),
    path("projects/<int:pk>/predictions/", api.prediction_list, name="api-prediction-list"),
    path("projects/<int:pk>/predictions/<uuid:prediction_id>/", api.prediction_detail, name="api-prediction-detail"),
    path("projects/<int:pk>/serving/", api.serving_detail, name="api-serving"),
    path("projects/<int:pk>/model-versions/", api.model_version_list, name="api-model-version-list"),
    path("projects/<int:pk>/model-versions/rollback/", api.model_version_rollback, name="api-model-version-rollback"),
    path("projects/<int:pk>/model-versions/<int:number>/promote/", api.model_version_promote,
         name="api-model-version-promote"),
]
