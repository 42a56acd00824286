"""The test kit's own fixtures, as a project gets them from the plugin's entry point
(the source tree is not installed, so the plugin is not loaded by its entry point here)."""

from flowjobs.testing.pytest_plugin import flowjobs, flowjobs_redis  # noqa: F401
