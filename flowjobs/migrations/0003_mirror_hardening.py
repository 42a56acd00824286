"""Mirror hardening (issue 14): reserved so that later migrations can depend on it."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("flowjobs", "0002_cancel_permission")]

    operations: list = []
