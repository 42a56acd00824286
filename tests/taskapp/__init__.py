"""Django tasks (``django.tasks``) run by the flowjobs task backend in tests/tasks."""
