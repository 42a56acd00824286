from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("flowjobs/", include("flowjobs.urls")),  # /flowjobs/metrics (Prometheus)
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
