from django.urls import include, path

urlpatterns = [path("flowjobs/", include("flowjobs.urls"))]
