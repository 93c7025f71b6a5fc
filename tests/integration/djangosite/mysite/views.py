import hashlib
import os
import time

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.template import engines
from django.views.decorators.csrf import csrf_exempt

FORM = engines["django"].from_string(
    '<!doctype html><title>form</title><form method="post">{% csrf_token %}'
    '<input name="name"><button>Send</button></form>'
)


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"home path={request.path} script={request.META.get('SCRIPT_NAME', '')!r}")


def page(request: HttpRequest, name: str) -> HttpResponse:
    return JsonResponse({"page": name, "path": request.path, "query": request.GET.dict()})


def form(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return HttpResponse(f"hello {request.POST.get('name', '')}")
    get_token(request)
    return HttpResponse(FORM.render({}, request))


@csrf_exempt
def upload(request: HttpRequest) -> HttpResponse:
    upload = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in upload.chunks():
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse({"name": upload.name, "size": size, "sha256": digest.hexdigest()})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "5"))
    delay = float(request.GET.get("delay", "0"))

    def chunks():
        for i in range(count):
            if delay:
                time.sleep(delay)
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def _read_version() -> str:
    path = os.environ.get("SITE_VERSION_FILE")
    if not path:
        return "1"
    with open(path) as f:
        return f.read().strip()


# Read once, at import: the reload tests change the file and expect new code to be served after SIGHUP.
VERSION = _read_version()


def version(request: HttpRequest) -> HttpResponse:
    text = VERSION
    delay = float(request.GET.get("delay", "0"))
    if delay:
        time.sleep(delay)
    return HttpResponse(f"version {text} pid {os.getpid()}")
