"""URLs of flowjobs outside the admin: ``path("flowjobs/", include("flowjobs.urls"))``."""

from django.urls import path

from . import views

app_name = "flowjobs"

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
]
