from django.contrib import admin

from projects.models import Dataset, Example, Label, Membership, Project, TaxonomyVersion, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__name"]
    autocomplete_fields = ["user", "team"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "task_type", "created_at"]
    list_filter = ["task_type", "team"]
    search_fields = ["name"]


class LabelInline(admin.TabularInline):
    model = Label
    extra = 0


@admin.register(TaxonomyVersion)
class TaxonomyVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "created_at", "created_by"]
    list_filter = ["project"]
    inlines = [LabelInline]


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "status", "imported_count", "error_count", "created_at"]
    list_filter = ["status", "source"]
    readonly_fields = ["errors"]


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "external_id", "created_at"]
    search_fields = ["text", "external_id"]
    list_filter = ["project"]
    raw_id_fields = ["dataset"]
