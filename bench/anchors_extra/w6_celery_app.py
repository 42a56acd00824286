"""The W6 Celery app: configured from bench_site's Django settings (w6_anchor_settings),
as a Django project sets Celery up, so that Celery's Django fixup is active."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "w6_anchor_settings")

app = Celery("w6")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="w6.insert_row")
def insert_row(data):
    from bench_site.models import Row

    Row.objects.create(seq=data["seq"])
