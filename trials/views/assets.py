"""Static assets of the dashboard, served by Django itself so the demo needs no collectstatic and no
CDN: plotly.js straight from the installed plotly package, Niivue's bundle as ``make viewer`` copies it
from npm, and the dashboard's own script and style from ``trials/static/dashboard/``. Responses carry an ETag and a long cache lifetime, and are gzip-compressed
for clients that accept it (plotly.js: 4.6 MB, 1.4 MB compressed), compressed once per file version."""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

import plotly
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.views.decorators.http import require_GET

_OWN = Path(__file__).resolve().parent.parent / "static" / "dashboard"

#: Public name -> (file, content type). Nothing outside this table is ever served.
ASSETS: dict[str, tuple[Path, str]] = {
    "plotly.min.js": (
        Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js",
        "text/javascript",
    ),
    # Niivue (WebGL viewer), pinned in package.json and copied here from node_modules by `make viewer`.
    "niivue.umd.js": (_OWN / "vendor" / "niivue.umd.js", "text/javascript"),
    "dashboard.js": (_OWN / "dashboard.js", "text/javascript"),
    "viewer.js": (_OWN / "viewer.js", "text/javascript"),
    "review.js": (_OWN / "review.js", "text/javascript"),
    "dashboard.css": (_OWN / "dashboard.css", "text/css"),
    "base.css": (_OWN / "base.css", "text/css"),
    "swagger.css": (_OWN / "swagger.css", "text/css"),
}


@lru_cache(maxsize=len(ASSETS))
def _load(path: Path, mtime_ns: int) -> tuple[bytes, bytes, str]:
    """The file, its gzip form (mtime 0: the same bytes every time) and a digest for the ETag."""
    data = path.read_bytes()
    return data, gzip.compress(data, compresslevel=9, mtime=0), hashlib.sha256(data).hexdigest()[:20]


def _accepts_gzip(request: HttpRequest) -> bool:
    codings = [c.split(";")[0].strip() for c in request.headers.get("Accept-Encoding", "").split(",")]
    return "gzip" in codings


@require_GET
def asset(request: HttpRequest, name: str) -> HttpResponse:
    """Serve one whitelisted asset (no login needed: nothing clinical in it)."""
    if name not in ASSETS:
        raise Http404("No such asset.")
    path, content_type = ASSETS[name]
    try:
        data, compressed, digest = _load(path, path.stat().st_mtime_ns)
    except FileNotFoundError as exc:
        raise Http404("Asset missing from this installation.") from exc
    zipped = _accepts_gzip(request)
    etag = f'"{digest}-gz"' if zipped else f'"{digest}"'
    if request.headers.get("If-None-Match") == etag:
        response: HttpResponse = HttpResponseNotModified()
    else:
        response = HttpResponse(compressed if zipped else data, content_type=f"{content_type}; charset=utf-8")
        if zipped:
            response["Content-Encoding"] = "gzip"
    response["ETag"] = etag
    response["Vary"] = "Accept-Encoding"
    response["Cache-Control"] = "public, max-age=86400"
    return response
