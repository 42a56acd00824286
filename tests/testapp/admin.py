from django.contrib import admin

from flowjobs.admin_links import job_link

from .models import Note


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    """A project's own admin linking to jobs: here a note's text is a job id."""

    list_display = ("id", job_link("text", queue="orders"), job_link("text", flow=True))
    readonly_fields = (job_link("text", queue="orders"),)

    class Media:
        css = {"all": ("flowjobs/admin.css",)}
