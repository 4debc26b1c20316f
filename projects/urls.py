from django.urls import path

from projects import views

app_name = "projects"
urlpatterns = [
    path("", views.project_list, name="list"),
    path("projects/new/", views.project_create, name="create"),
    path("projects/<int:pk>/", views.project_detail, name="detail"),
    path("projects/<int:pk>/settings/", views.project_settings, name="settings"),
    path("projects/<int:pk>/taxonomy/labels/", views.taxonomy_add_label, name="add-label"),
    path("projects/<int:pk>/datasets/new/", views.dataset_upload, name="upload"),
    path("projects/<int:pk>/datasets/<int:dataset_pk>/", views.dataset_detail, name="dataset"),
    path("projects/<int:pk>/datasets/<int:dataset_pk>/retry/", views.dataset_retry, name="dataset-retry"),
]
