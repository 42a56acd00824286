"""Mirror hardening (issue 14): unstorable jobs are recorded, lease fences are checked."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("flowjobs", "0002_cancel_permission")]

    operations = [
        migrations.CreateModel(
            name="UnstorableJob",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("digest", models.CharField(max_length=64, unique=True)),
                ("prefix", models.TextField()),
                ("queue", models.TextField()),
                ("job_id", models.TextField(blank=True, verbose_name="job id")),
                ("reason", models.TextField()),
                ("first_seen", models.DateTimeField()),
                ("last_seen", models.DateTimeField()),
            ],
            options={"verbose_name": "unstorable job", "ordering": ("-last_seen", "-id")},
        ),
        migrations.CreateModel(
            name="LeaseFence",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=255, unique=True)),
                ("fence", models.BigIntegerField(default=0)),
            ],
            options={"verbose_name": "lease fence"},
        ),
    ]
