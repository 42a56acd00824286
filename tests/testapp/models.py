from django.db import models


class Note(models.Model):
    """Written by the test processors, to prove the ORM works inside workers."""

    text = models.CharField(max_length=200)
