import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path
from django_rq import urls as rq_urls
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from labelhub.security import PasswordResetLimitedView

# django-rq's job pages (staff only) carry inline <style> blocks: allowed there only. Their one inline
# script stays refused: it calls a jQuery plugin that Django's admin no longer has (it fails with or
# without the CSP; admin/js/actions.js starts the action bar by itself). A job's result rows link by
# an inline onclick, which the CSP would refuse (and report, at load): rq_page takes the inline handlers
# out of the HTML, and templates/django_rq/job_detail.html adds static/js/rq-rows.js, which opens a
# row's result on click instead.
rq_styles = csp_update({"style-src": ["'unsafe-inline'"]})
INLINE_HANDLER = re.compile(rb"""\son[a-z]+=(?:"[^"]*"|'[^']*')""")


def rq_page(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    styled = rq_styles(view)

    @wraps(view)
    def page(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = styled(request, *args, **kwargs)
        if isinstance(response, HttpResponse) and response.get("Content-Type", "").startswith("text/html"):
            response.content = INLINE_HANDLER.sub(b"", response.content)
        return response

    return page


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """/favicon.ico, which browsers ask for on pages that name no icon (the admin's, django-rq's, the
    browsable API's): the one our pages name. Public like the static files; a temporary redirect, since
    the static file's name carries its hash in production."""
    return HttpResponseRedirect(static("img/favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon),
    # Before admin/: the admin answers 404 for every path under it that it does not know.
    path("admin/jobs/", include((rq_urls.get_api_urlpatterns() + rq_urls.get_admin_urlpatterns(view_wrapper=rq_page),
                                 "django_rq"))),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("projects.account_urls")),
    path("accounts/password/change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("accounts/password/reset/", PasswordResetLimitedView.as_view(), name="password_reset"),
    path("accounts/password/reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("accounts/reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(),
         name="password_reset_confirm"),
    path("accounts/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file (the CSP refuses inline ones).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api_docs.html"),
         name="api-docs"),
    path("api/v1/", include("projects.api_urls")),
    path("api/v1/", include("annotation.review_api")),
    path("api/v1/", include("learning.api_urls")),
    path("api/v1/", include("serving.api_urls")),
    path("", include("annotation.urls")),
    path("", include("learning.urls")),
    path("", include("serving.urls")),
    path("", include("projects.urls")),
]
