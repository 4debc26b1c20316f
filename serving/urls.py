from django.urls import path

from serving import views

app_name = "serving"
urlpatterns = [
    path("projects/<int:pk>/serving/", views.serving_page, name="serving"),
    path("projects/<int:pk>/versions/", views.versions_page, name="versions"),
    path("projects/<int:pk>/versions/rollback/", views.version_rollback, name="version-rollback"),
    path("projects/<int:pk>/versions/auto-promote/", views.version_auto_promote, name="version-auto-promote"),
    path("projects/<int:pk>/versions/<int:number>/promote/", views.version_promote, name="version-promote"),
    path("projects/<int:pk>/api-keys/", views.api_keys_page, name="api-keys"),
    path("projects/<int:pk>/api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("projects/<int:pk>/webhooks/", views.webhooks_page, name="webhooks"),
    path("projects/<int:pk>/webhooks/<int:endpoint_id>/", views.webhook_change, name="webhook-change"),
    path("projects/<int:pk>/webhooks/deliveries/<uuid:delivery_id>/redeliver/", views.webhook_redeliver,
         name="webhook-redeliver"),
    path("projects/<int:pk>/monitoring/", views.monitoring_page, name="monitoring"),
]
