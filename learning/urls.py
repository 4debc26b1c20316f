from django.urls import path

from learning import views

app_name = "learning"
urlpatterns = [
    path("projects/<int:pk>/model/", views.model_panel, name="model"),
]
