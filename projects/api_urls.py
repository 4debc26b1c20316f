from django.urls import path

from projects import api

urlpatterns = [
    path("projects/", api.project_list, name="api-project-list"),
    path("projects/<int:pk>/", api.project_detail, name="api-project-detail"),
    path("projects/<int:pk>/datasets/", api.dataset_list, name="api-dataset-list"),
    path("projects/<int:pk>/datasets/upload/", api.file_import, name="api-file-import"),
    path("projects/<int:pk>/datasets/<int:dataset_pk>/", api.dataset_detail, name="api-dataset-detail"),
    path("projects/<int:pk>/examples/bulk/", api.bulk_import, name="api-bulk-import"),
    path("projects/<int:pk>/taxonomy/versions/", api.taxonomy_versions, name="api-taxonomy-versions"),
    path("projects/<int:pk>/taxonomy/versions/<int:number>/", api.taxonomy_version, name="api-taxonomy-version"),
    path("projects/<int:pk>/taxonomy/versions/<int:number>/diff/<int:other>/", api.taxonomy_diff,
         name="api-taxonomy-diff"),
]
