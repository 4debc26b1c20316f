from django.urls import path

from annotation import adjudication_api, adjudication_views, browse, review, views

app_name = "annotation"
urlpatterns = [
    path("projects/<int:pk>/label/", views.label, name="label"),
    path("projects/<int:pk>/label/submit/", views.submit, name="submit"),
    path("projects/<int:pk>/label/skip/", views.skip, name="skip"),
    path("projects/<int:pk>/label/undo/", views.undo, name="undo"),
    path("projects/<int:pk>/examples/", browse.browse, name="browse"),
    path("projects/<int:pk>/examples/bulk/", browse.bulk_action, name="bulk"),
    path("projects/<int:pk>/examples/datasets/<int:dataset_pk>/delete/", browse.delete_dataset, name="delete-dataset"),
    path("projects/<int:pk>/labelled-count/", views.labelled_count, name="labelled-count"),
    path("projects/<int:pk>/examples/<int:example_pk>/comments/", views.comments, name="comments"),
    path("projects/<int:pk>/examples/<int:example_pk>/flag/", views.flag, name="flag"),
    path("projects/<int:pk>/review/", review.review_queue_page, name="review"),
    path("projects/<int:pk>/review/candidates/<int:candidate_pk>/decide/", review.decide, name="review-decide"),
    path("projects/<int:pk>/data-quality/", review.review_summary, name="review-summary"),
    path("projects/<int:pk>/review/<int:flag_pk>/resolve/", review.resolve, name="resolve"),
    path("projects/<int:pk>/taxonomy/edit/", views.taxonomy_edit_label, name="edit-label"),
    path("projects/<int:pk>/agreement/", adjudication_views.agreement, name="agreement"),
    path("projects/<int:pk>/adjudication/", adjudication_views.adjudication_page, name="adjudication"),
    path("projects/<int:pk>/adjudication/decide/", adjudication_views.adjudicate, name="adjudicate"),
    path("api/v1/projects/<int:pk>/agreement/", adjudication_api.agreement, name="api-agreement"),
    path("api/v1/projects/<int:pk>/conflicts/", adjudication_api.conflicts, name="api-conflicts"),
    path("api/v1/projects/<int:pk>/adjudications/", adjudication_api.adjudicate, name="api-adjudicate"),
]
