from django.urls import path

from mysite import views

urlpatterns = [
    path("", views.home),
    path("page/<slug:name>/", views.page),
    path("form/", views.form),
    path("upload/", views.upload),
    path("stream/", views.stream),
    path("version/", views.version),
]
