"""REST API of the projects app (DRF, token auth): projects, datasets, bulk import."""
from __future__ import annotations

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from labelhub.errors import ActionError
from labelhub.parsers import JSONParser
from projects import imports, taxonomy
from projects.access import accepts_api_keys, acting_user, get_project_for_api, request_credential
from projects.models import Dataset, DatasetStatus, Project, Role
from projects.serializers import (
    BulkImportSerializer,
    DatasetSerializer,
    FileImportSerializer,
    ProjectSerializer,
    TaxonomyDiffSerializer,
    TaxonomyVersionSerializer,
    TaxonomyVersionSummarySerializer,
)


@extend_schema(responses=ProjectSerializer(many=True), summary="Projects you can see")
@api_view(["GET"])
@accepts_api_keys
def project_list(request: Request) -> Response:
    key = request_credential(request)
    projects = (Project.objects.filter(pk=key.project_id) if key and key.has_scope("read")
                else Project.objects.visible_to(request.user)).select_related("team").distinct()
    return Response(ProjectSerializer(projects, many=True).data)


@extend_schema(responses=ProjectSerializer, summary="One project with its current taxonomy")
@api_view(["GET"])
@accepts_api_keys
def project_detail(request: Request, pk: int) -> Response:
    return Response(ProjectSerializer(get_project_for_api(request, pk, scope="read")).data)


@extend_schema(responses=DatasetSerializer(many=True), summary="Import batches of a project")
@api_view(["GET"])
@accepts_api_keys
def dataset_list(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    return Response(DatasetSerializer(project.datasets.all()[:100], many=True).data)


@extend_schema(responses=DatasetSerializer, summary="Status, progress and error report of one import")
@api_view(["GET"])
@accepts_api_keys
def dataset_detail(request: Request, pk: int, dataset_pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    dataset = get_object_or_404(Dataset, pk=dataset_pk, project=project)
    if dataset.is_running:
        # Whoever polls a running import is who notices that its worker died.
        imports.check_stale_imports(project)
        dataset.refresh_from_db()
    return Response(DatasetSerializer(dataset).data)


@extend_schema(
    request=BulkImportSerializer,
    responses={201: DatasetSerializer, 400: DatasetSerializer},
    summary="Push examples as JSON (all or nothing)",
    description="Imports up to LABELHUB_BULK_MAX_ROWS examples inside the request. Examples carrying a label "
    "become annotations. Duplicate texts are skipped and counted. If any row is invalid nothing is imported "
    "and the response (400) lists every row's error.",
)
@api_view(["POST"])
@parser_classes([JSONParser])
@accepts_api_keys
def bulk_import(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="import", role=Role.MANAGER)
    serializer = BulkImportSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    try:
        dataset = imports.import_records(
            project, records=serializer.validated_data["examples"], user=acting_user(request),
            add_unknown_labels=serializer.validated_data["add_unknown_labels"],
            hidden_metadata=serializer.validated_data["hidden_metadata"],
        )
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    ok = dataset.status == DatasetStatus.DONE
    code = status.HTTP_201_CREATED if ok else status.HTTP_400_BAD_REQUEST
    return Response(DatasetSerializer(dataset).data, status=code)


@extend_schema(
    request={"multipart/form-data": FileImportSerializer},
    responses={202: DatasetSerializer},
    summary="Upload a file to import in the background",
    description="Queues the import and answers 202 at once; poll the dataset's URL for progress and errors. The "
    "encoding and delimiter are detected unless given.",
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
@accepts_api_keys
def file_import(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="import", role=Role.MANAGER)
    serializer = FileImportSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    try:
        # One transaction: a mapping refused after the file was read leaves no draft behind.
        with transaction.atomic():
            dataset = imports.create_dataset_from_upload(project, upload=data["file"], user=acting_user(request),
                                                         source="api", encoding=data["encoding"],
                                                         delimiter=data["delimiter"], sheet=data["sheet"])
            text_column, label_column = data["text_column"], data["label_column"]
            if project.is_span:
                # A span file says what it holds by its keys ({"tokens", "tags"}, {"text", "spans"}, CoNLL).
                text_names, label_names = imports.column_names(project)
                if "text_column" not in request.data:
                    text_column = imports.guess_column(dataset.columns, text_names) or text_column
                if "label_column" not in request.data:
                    label_column = imports.guess_column(dataset.columns, label_names)
            dataset = imports.start_import(dataset, text_column=text_column,
                                           label_column=label_column, id_column=data["id_column"],
                                           add_unknown_labels=data["add_unknown_labels"],
                                           hidden_columns=data["hidden_columns"],
                                           dropped_columns=data["dropped_columns"])
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    dataset.refresh_from_db()
    if dataset.status == DatasetStatus.FAILED:
        # The job could not be queued (Redis down): the dataset is failed with the reason, not left queued.
        return Response({"detail": imports.UNQUEUED_REASON, **DatasetSerializer(dataset).data},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE)
    return Response(DatasetSerializer(dataset).data, status=status.HTTP_202_ACCEPTED,
                    headers={"Location": f"/api/v1/projects/{project.pk}/datasets/{dataset.pk}/"})


@extend_schema(responses=TaxonomyVersionSummarySerializer(many=True), summary="Taxonomy versions, newest first")
@api_view(["GET"])
@accepts_api_keys
def taxonomy_versions(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    versions = project.taxonomy_versions.select_related("created_by").order_by("-number")
    return Response(TaxonomyVersionSummarySerializer(versions, many=True).data)


@extend_schema(responses=TaxonomyVersionSerializer, summary="One taxonomy version with its labels")
@api_view(["GET"])
@accepts_api_keys
def taxonomy_version(request: Request, pk: int, number: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    return Response(TaxonomyVersionSerializer(get_object_or_404(project.taxonomy_versions, number=number)).data)


@extend_schema(responses=TaxonomyDiffSerializer, summary="What changed between two taxonomy versions",
               description="Labels are matched by their stable key, so a rename shows as a rename.")
@api_view(["GET"])
@accepts_api_keys
def taxonomy_diff(request: Request, pk: int, number: int, other: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    old = get_object_or_404(project.taxonomy_versions, number=number)
    new = get_object_or_404(project.taxonomy_versions, number=other)
    low, high = sorted((old.number, new.number))
    changelog = [line for version in project.taxonomy_versions.filter(number__gt=low, number__lte=high)
                 .order_by("number") for line in version.changelog]
    data = {"from_version": old.number, "to_version": new.number, "changelog": changelog,
            "changes": taxonomy.taxonomy_diff(old, new)}
    return Response(TaxonomyDiffSerializer(data).data)
