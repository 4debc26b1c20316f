from django.urls import path

from learning import activity, dashboard, views

app_name = "learning"
urlpatterns = [
    path("projects/<int:pk>/model/", views.model_panel, name="model"),
    path("projects/<int:pk>/model/status/", views.model_status_badge, name="model-status"),
    path("projects/<int:pk>/embedding/", views.embedding_status, name="embedding-status"),
    path("projects/<int:pk>/dashboard/", dashboard.dashboard, name="dashboard"),
    path("projects/<int:pk>/activity/", activity.activity_panel, name="activity"),
]
