from django.urls import path

from learning import serving_views, views

app_name = "learning"
urlpatterns = [
    path("projects/<int:pk>/model/", views.model_panel, name="model"),
    path("projects/<int:pk>/serving/", serving_views.serving_page, name="serving"),
    path("projects/<int:pk>/versions/", serving_views.versions_page, name="versions"),
    path("projects/<int:pk>/versions/rollback/", serving_views.version_rollback, name="version-rollback"),
    path("projects/<int:pk>/versions/auto-promote/", serving_views.version_auto_promote, name="version-auto-promote"),
    path("projects/<int:pk>/versions/<int:number>/promote/", serving_views.version_promote, name="version-promote"),
    path("projects/<int:pk>/api-keys/", serving_views.api_keys_page, name="api-keys"),
    path("projects/<int:pk>/api-keys/<int:key_id>/revoke/", serving_views.api_key_revoke, name="api-key-revoke"),
    path("projects/<int:pk>/webhooks/", serving_views.webhooks_page, name="webhooks"),
    path("projects/<int:pk>/webhooks/<int:endpoint_id>/", serving_views.webhook_change, name="webhook-change"),
    path("projects/<int:pk>/webhooks/deliveries/<uuid:delivery_id>/redeliver/", serving_views.webhook_redeliver,
         name="webhook-redeliver"),
    path("projects/<int:pk>/monitoring/", serving_views.monitoring_page, name="monitoring"),
]
