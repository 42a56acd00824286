"""The W6 task for django-tasks-db (Django's `django.tasks` API, the TASKS backend of
w6_anchor_settings)."""

from bench_site.models import Row
from django.tasks import task


@task()
def insert_row(data):
    Row.objects.create(seq=data["seq"])
