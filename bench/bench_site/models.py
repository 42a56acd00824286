"""The table W6 writes: one row per job, stamped by the database's clock."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now


class Row(models.Model):
    seq = models.IntegerField()
    created_at = models.DateTimeField(db_default=Now())
