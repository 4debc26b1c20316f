from django.urls import path

from learning import api, explore_api, export_api, finetune_views

urlpatterns = [
    path("projects/<int:pk>/model/", api.model_summary, name="api-model-summary"),
    path("projects/<int:pk>/export/", export_api.export, name="api-export"),
    path("projects/<int:pk>/taxonomy/history/", export_api.taxonomy_history, name="api-taxonomy-history"),
    path("projects/<int:pk>/model-versions/<int:number>/download/", export_api.model_download,
         name="api-model-download"),
    path("projects/<int:pk>/finetune/", finetune_views.finetune_runs_api, name="api-finetune-runs"),
    *explore_api.urlpatterns,
]
