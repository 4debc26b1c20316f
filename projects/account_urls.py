"""A user's own pages under /accounts/ (personal API tokens); included without a namespace."""
from django.urls import path

from projects import views

urlpatterns = [
    path("token/", views.api_token, name="api-token"),
    path("token/<int:token_id>/revoke/", views.api_token_revoke, name="api-token-revoke"),
]
