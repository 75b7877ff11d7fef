"""MetTrack Django settings, read from environment variables (django-environ).

Every setting a site changes is an environment variable, read here (django-environ) or by
docker/gunicorn.conf.py; README "Configuration" describes each and docker/env.example lists each
(tests/deployment/test_docker.py keeps the three in step). The main ones: ``DATABASE_URL`` (default: the
demo's SQLite file), ``CELERY_BROKER_URL`` (empty: embedded mode, jobs run in-process), ``SECRET_KEY``
and ``ALLOWED_HOSTS`` (required when ``DEBUG`` is off), ``MEDIA_ROOT`` (stored images, masks, exports).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG: bool = env.bool("DEBUG", default=False)

# The test suite (pytest, or manage.py test) runs with DEBUG off, like production, but needs no secrets:
# it only talks to the test client. Production never runs inside pytest.
TESTING: bool = "pytest" in sys.modules or sys.argv[1:2] == ["test"]

# With DEBUG off the site is assumed to face real users: refuse to start rather than run with a
# guessable key or a Host header check that accepts anything.
_secret_key = env.str("SECRET_KEY", default="")
_allowed_hosts = env.list("ALLOWED_HOSTS", default=[])
if not DEBUG and not TESTING:
    missing = [
        name for name, value in (("SECRET_KEY", _secret_key), ("ALLOWED_HOSTS", _allowed_hosts)) if not value
    ]
    if missing:
        raise ImproperlyConfigured(
            f"MetTrack refuses to start with DEBUG off while {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. Set the environment variable(s) "
            "(e.g. SECRET_KEY=<50 random characters>, ALLOWED_HOSTS=mettrack.example.org), "
            "or set DEBUG=1 for local development."
        )
SECRET_KEY: str = _secret_key or "django-insecure-mettrack-development-only-key-never-use-in-production"
ALLOWED_HOSTS: list[str] = _allowed_hosts or ["127.0.0.1", "localhost", "testserver", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "health_check",
    "django_prometheus",
    "trials",
]

MIDDLEWARE = [
    # Outermost: every request counted and timed (issue 18, operations).
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The request's correlation id (X-Request-ID) on its audit events and its log lines.
    "trials.middleware.CorrelationIdMiddleware",
    # Static files (the admin's, Swagger UI's) straight from STATIC_ROOT, before sessions or the database.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'demo.sqlite3'}"),
}
# Persistent connections: a web or worker thread reuses its connection for DB_CONN_MAX_AGE seconds
# instead of opening one per request (at most one per gunicorn thread and worker process, so the
# total is bounded by GUNICORN_WORKERS x GUNICORN_THREADS per web node); a broken one is replaced.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The demo database lives in var/, which is not in git: create it on first use.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The embedded worker thread and the web server share the file; wait instead of failing on a lock.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
# Stored images, masks and DICOM objects are served only by views that check the user's trial
# (never from a public media URL); MEDIA_URL is not routed.
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "var" / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # collectstatic (in the image) writes compressed copies; WhiteNoise serves them. Names are not hashed,
    # so a page rendered before collectstatic (the test suite, a development checkout) still works.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Without a collected STATIC_ROOT (development, the tests), WhiteNoise serves from the apps' folders.
WHITENOISE_USE_FINDERS = DEBUG or TESTING or env.bool("WHITENOISE_USE_FINDERS", default=False)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Celery: an empty broker URL selects the embedded mode of the demo (tasks run in-process after
# commit, no Redis needed). Anything else is a real broker, Redis in production and CI.
CELERY_BROKER_URL: str = env.str("CELERY_BROKER_URL", default="")
CELERY_EMBEDDED: bool = not CELERY_BROKER_URL
CELERY_RESULT_BACKEND: str | None = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"

# Pipeline (worker/, trials/pipeline.py). Queue names are settable so that test runs use their own.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_DEFAULT_QUEUE", default=CELERY_TASK_DEFAULT_QUEUE)
CELERY_GPU_QUEUE: str = env.str("CELERY_GPU_QUEUE", default="gpu")
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ALWAYS_EAGER = CELERY_EMBEDDED
# A message taken by a worker that died without acknowledging returns to its queue after this long; it
# must exceed the longest task (PIPELINE_JOB_TIME_LIMIT_S), or a running task is delivered twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_S", default=7200),
    # How often a worker looks for such messages (seconds); every look is one cheap Redis query.
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL_S", default=10),
    "unacked_restore_throttle": 1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
PIPELINE_MODEL_DIR: str = env.str("PIPELINE_MODEL_DIR", default="")  # empty: segmentation/models/demo-unetr
PIPELINE_DEVICE: str = env.str("PIPELINE_DEVICE", default="auto")  # auto | cpu | cuda
# auto | torch | onnx | openvino; empty: the model config's (auto: OpenVINO on the CPU when the model
# has its export)
PIPELINE_BACKEND: str = env.str("PIPELINE_BACKEND", default="")
PIPELINE_JOB_TIME_LIMIT_S: int = env.int("PIPELINE_JOB_TIME_LIMIT_S", default=3600)
PIPELINE_ENQUEUE_GRACE_S: int = env.int("PIPELINE_ENQUEUE_GRACE_S", default=30)
PIPELINE_SWEEP_INTERVAL_S: float = env.float("PIPELINE_SWEEP_INTERVAL_S", default=60.0)
PIPELINE_MAX_UPLOAD_BYTES: int = env.int("PIPELINE_MAX_UPLOAD_BYTES", default=2 * 1024**3)
PIPELINE_EMBEDDED_SYNC: bool = env.bool("PIPELINE_EMBEDDED_SYNC", default=False)

# Job leases: a running job's worker beats every PIPELINE_HEARTBEAT_S; a beat older than
# PIPELINE_LEASE_S means the worker is gone and the job is sent again (at most PIPELINE_MAX_ATTEMPTS
# times). A queued job whose message is missing from the broker PIPELINE_REQUEUE_AFTER_S after it was
# sent (lost with a broker restart) is sent again.
PIPELINE_HEARTBEAT_S: float = env.float("PIPELINE_HEARTBEAT_S", default=30.0)
PIPELINE_LEASE_S: float = env.float("PIPELINE_LEASE_S", default=300.0)
PIPELINE_MAX_ATTEMPTS: int = env.int("PIPELINE_MAX_ATTEMPTS", default=3)
PIPELINE_REQUEUE_AFTER_S: float = env.float("PIPELINE_REQUEUE_AFTER_S", default=300.0)

# --- PACS connectivity (issue 17, README "PACS"): the DICOM listener and routing of received studies.
# The listener (manage.py dicom_listener) answers as DICOM_AE_TITLE on DICOM_PORT to the callers of
# DICOM_ALLOWED_CALLERS ("AE" or "AE@host", comma-separated; none: everyone is refused). Instances are
# spooled under DICOM_SPOOL_DIR; a study is complete DICOM_QUIET_PERIOD_S after its last instance (or
# when its association is released). Studies that cannot be routed keep their raw instances under
# DICOM_INBOX_DIR until assigned or discarded. DICOM_ID_KEY keys the hash of site Patient IDs (default:
# derived from SECRET_KEY; every process of a site must use the same).
DICOM_AE_TITLE: str = env.str("DICOM_AE_TITLE", default="METTRACK")
DICOM_PORT: int = env.int("DICOM_PORT", default=11112)
DICOM_BIND: str = env.str("DICOM_BIND", default="0.0.0.0")
DICOM_ALLOWED_CALLERS: list[str] = env.list("DICOM_ALLOWED_CALLERS", default=[])
DICOM_SPOOL_DIR = Path(env.str("DICOM_SPOOL_DIR", default=str(BASE_DIR / "var" / "dicom-spool")))
DICOM_INBOX_DIR = Path(env.str("DICOM_INBOX_DIR", default=str(DICOM_SPOOL_DIR / "inbox")))
DICOM_QUIET_PERIOD_S: float = env.float("DICOM_QUIET_PERIOD_S", default=30.0)
DICOM_ID_KEY: str = env.str("DICOM_ID_KEY", default="")
# Sending results to PACS destinations: a failed send is retried after PACS_SEND_BACKOFF_S, doubled each
# time up to PACS_SEND_BACKOFF_MAX_S, PACS_SEND_MAX_RETRIES times; then the delivery is failed.
# Pull mode: a DICOMweb source (QIDO-RS/WADO-RS root) that beat queries every DICOMWEB_PULL_INTERVAL_S
# for new studies of the trials (empty: no pull).
DICOMWEB_PULL_URL: str = env.str("DICOMWEB_PULL_URL", default="")
DICOMWEB_PULL_INTERVAL_S: float = env.float("DICOMWEB_PULL_INTERVAL_S", default=300.0)
PACS_SEND_MAX_RETRIES: int = env.int("PACS_SEND_MAX_RETRIES", default=8)
PACS_SEND_BACKOFF_S: float = env.float("PACS_SEND_BACKOFF_S", default=2.0)
PACS_SEND_BACKOFF_MAX_S: float = env.float("PACS_SEND_BACKOFF_MAX_S", default=300.0)

# --- operations (issue 18): readiness, metrics, storage safety
# /metrics needs "Authorization: Bearer <METRICS_TOKEN>"; without a token only loopback clients get it.
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
# Writes of stored files are refused (507) when the volume would keep less than this free; /readyz
# reports the node not ready under it.
# (Under the test suite none is kept: a nearly full CI disk must not turn every image write into a 507.)
STORAGE_MIN_FREE_BYTES: int = env.int("STORAGE_MIN_FREE_BYTES", default=0 if TESTING else 256 * 1024**2)

REST_FRAMEWORK = {
    # Token first: an anonymous API request then gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "trials.api.pagination.StandardPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "trials.api.exceptions.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "MetTrack API",
    "DESCRIPTION": "Longitudinal RANO-BM response assessment for brain-metastasis trials.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from the installed sidecar package: hospital networks are often closed to CDNs.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One schema enum per choice set, named after trials/choices.py.
    "ENUM_NAME_OVERRIDES": {
        "ResponseEnum": "trials.choices.ResponseChoices",
        "JobStateEnum": "trials.choices.JobState",
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)

# Behind the TLS-terminating reverse proxy (README "Deployment"; X-Forwarded-Proto, the redirect and HSTS
# are in the security block below): the host name the proxy forwards, and the public origin(s) of forms
# posted through it (https://mettrack.example.org), which CSRF checks.
USE_X_FORWARDED_HOST: bool = env.bool("USE_X_FORWARDED_HOST", default=False)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Every line carries the correlation id of its request or job (trials/logs.py); LOG_FORMAT=json writes
# one JSON object a line (the containers), text a readable line (development).
LOG_FORMAT: str = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation_id": {"()": "trials.logs.CorrelationIdFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s [cid=%(correlation_id)s]"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["correlation_id"], "formatter": LOG_FORMAT}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- security (issue 19) ------------------------------------------------------------------------------
# Kept in one block so that other changes to this file merge cleanly. README "Security" explains each.

# JSON bodies nested deeper than a few levels are a 400 (a decoder crash was a 500).
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = [
    "trials.api.parsers.BoundedJSONParser",
    "rest_framework.parsers.FormParser",
    "rest_framework.parsers.MultiPartParser",
]

# An observation's source: every value in responses, only a reader's in requests (trials/api/schema.py);
# two enum names so the schema keeps both.
_enum_names: dict[str, Any] = dict(SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"])  # type: ignore[call-overload]
_enum_names["ObservationSourceEnum"] = "trials.choices.ObservationSource"
_enum_names["ReaderObservationSourceEnum"] = ["manual", "edited"]
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = _enum_names

# Apps and middleware of this block, added here rather than in the lists above.
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "rest_framework.authtoken"]
# axes before trials: its login-failure receiver marks a lockout before trials' receiver audits it.
INSTALLED_APPS.insert(INSTALLED_APPS.index("trials"), "axes")
INSTALLED_APPS += ["knox", "csp"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware"
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("csp.middleware.CSPMiddleware") + 1, "trials.middleware.SecurityHeadersMiddleware"
)
# Lockout (django-axes): last, so that it sees every authentication of the request.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")

# Authentication: django-axes refuses a locked-out user before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "trials.auth_backends.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Five failures of one user name from one address lock that pair for LOGIN_LOCKOUT_MINUTES (web login,
# admin login, API token); the e-signature has its own count (trials.actions.accounts).
AXES_FAILURE_LIMIT: int = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_SENSITIVE_PARAMETERS = ["password"]
AXES_VERBOSE = False
SIGNATURE_FAILURE_LIMIT: int = env.int("SIGNATURE_FAILURE_LIMIT", default=5)
SIGNATURE_LOCKOUT_MINUTES: int = env.int("SIGNATURE_LOCKOUT_MINUTES", default=15)

# API tokens (django-rest-knox): hashed (SHA-512) at rest, expiring, revocable, tied to the password.
KNOX_TOKEN_MODEL = "trials.ApiToken"
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=env.int("API_TOKEN_TTL_HOURS", default=12)),
    "AUTO_REFRESH": False,
    "TOKEN_LIMIT_PER_USER": env.int("API_TOKEN_LIMIT_PER_USER", default=20),
    "AUTH_HEADER_PREFIX": "Token",  # the contract clients use: Authorization: Token <key>
}
REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] = [
    "trials.api.authentication.ApiTokenAuthentication",
    "rest_framework.authentication.SessionAuthentication",
]
# Throttles (per client address for anonymous requests, per user otherwise); the token endpoint and the
# signatures have their own, stricter scopes. Counters live in the cache (CACHE_URL: Redis shares them
# between processes; the default local-memory cache counts per process).
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = [
    "rest_framework.throttling.AnonRateThrottle",
    "rest_framework.throttling.UserRateThrottle",
    "rest_framework.throttling.ScopedRateThrottle",
]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    "anon": env.str("THROTTLE_ANON", default="120/min"),
    "user": env.str("THROTTLE_USER", default="6000/hour"),
    "auth": env.str("THROTTLE_AUTH", default="20/min"),
    "signature": env.str("THROTTLE_SIGNATURE", default="30/min"),
}
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://mettrack")}

# Sessions: idle timeout (each request extends it), gone when the browser closes.
SESSION_COOKIE_AGE: int = env.int("SESSION_IDLE_TIMEOUT_S", default=30 * 60)
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# Separation of duties: with this on, nobody holds both the admin and the radiologist role in one trial,
# and nobody grants a role to themselves (superusers excepted). Self-grants are audited either way.
SEPARATE_ADMIN_AND_REVIEW_DUTIES: bool = env.bool("SEPARATE_ADMIN_AND_REVIEW_DUTIES", default=False)

# The OpenAPI schema and Swagger UI: signed-in users only unless API_DOCS_PUBLIC=1.
API_DOCS_PUBLIC: bool = env.bool("API_DOCS_PUBLIC", default=False)
SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"] = (
    ["rest_framework.permissions.AllowAny"]
    if API_DOCS_PUBLIC
    else ["rest_framework.permissions.IsAuthenticated"]
)
SPECTACULAR_SETTINGS["SERVE_AUTHENTICATION"] = REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"]

# Content-Security-Policy (django-csp): scripts, styles and images from this server only; no inline script
# or style (the templates keep theirs in trials/static/dashboard/), no framing, no plugins.
PLOTLY_STYLE_HASHES = [
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",  # the empty <style> (SHA-256 of "")
    "'sha256-V2sIX92Uh6ZaGSFTKMHghsB85b9toJtmazgG09AI2uk='",  # MapLibre's stylesheet in plotly.min.js
]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        # plotly.js (6.9.0, pinned) adds two <style> elements of its own: an empty one it then fills
        # through the CSSOM (allowed), and MapLibre's fixed stylesheet. Their hashes, no 'unsafe-inline'.
        "style-src": ["'self'", *PLOTLY_STYLE_HASHES],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# Behind TLS (a reverse proxy that terminates it): trust its X-Forwarded-Proto, redirect plain HTTP,
# HSTS. On by default with DEBUG off; TLS_BEHIND_PROXY=0 / SECURE_SSL_REDIRECT=0 only on a closed network
# without TLS (and then SESSION_COOKIE_SECURE=0, CSRF_COOKIE_SECURE=0 too).
if not DEBUG:
    if env.bool("TLS_BEHIND_PROXY", default=True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not TESTING)
    # The health and metrics probes come from inside the cluster over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading commits the whole domain (and its subdomains) to HTTPS in every browser: the
        # hospital's decision, not MetTrack's. check --deploy would otherwise remind of it (W021).
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
