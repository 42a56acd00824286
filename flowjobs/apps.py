"""Django application configuration for flowjobs."""

from __future__ import annotations

from django.apps import AppConfig


class FlowJobsConfig(AppConfig):
    name = "flowjobs"
    label = "flowjobs"
    verbose_name = "Flow jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here so that ``import flowjobs`` stays Django-free.
        from . import checks, conf, registry

        checks.register_checks()
        conf.connect_signals()
        registry.autodiscover()
