from django.urls import path

from learning import activity, dashboard, explore_views, export_views, finetune_views, projection, views

app_name = "learning"
urlpatterns = [
    path("projects/<int:pk>/model/", views.model_panel, name="model"),
    path("projects/<int:pk>/model/status/", views.model_status_badge, name="model-status"),
    path("projects/<int:pk>/embedding/", views.embedding_status, name="embedding-status"),
    path("projects/<int:pk>/dashboard/", dashboard.dashboard, name="dashboard"),
    path("projects/<int:pk>/dashboard/projection/", projection.projection_panel, name="projection"),
    path("projects/<int:pk>/counters/", dashboard.project_counters, name="project-counters"),
    path("projects/<int:pk>/activity/", activity.activity_panel, name="activity"),
    path("projects/<int:pk>/export/", export_views.export_page, name="export"),
    path("projects/<int:pk>/export/download/", export_views.export_download, name="export-download"),
    path("projects/<int:pk>/export/taxonomy-history/", export_views.taxonomy_history, name="export-taxonomy"),
    path("projects/<int:pk>/export/models/<int:number>/", export_views.model_download, name="export-model"),
    path("projects/<int:pk>/explore/", explore_views.explore_page, name="explore"),
    path("projects/<int:pk>/explore/run/", explore_views.explore_run, name="explore-run"),
    path("projects/<int:pk>/explore/send/", explore_views.explore_send, name="explore-send"),
    path("projects/<int:pk>/explore/label/", explore_views.explore_add_label, name="explore-add-label"),
    path("projects/<int:pk>/finetune/", finetune_views.finetune_panel, name="finetune"),
    path("projects/<int:pk>/finetune/start/", finetune_views.finetune_start, name="finetune-start"),
    path("projects/<int:pk>/finetune/cancel/", finetune_views.finetune_cancel, name="finetune-cancel"),
    path("projects/<int:pk>/finetune/<int:number>/download/", finetune_views.finetune_download,
         name="finetune-download"),
]
