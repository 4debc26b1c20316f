"""LabelHub settings: one file, every value from the environment.

Each variable is documented in README.md ("Configuration"). The defaults give a
first look with nothing installed (SQLite, an embedded job runner, a file cache);
production sets DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY and DEBUG=0.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (export SECRET_KEY=... or DEBUG=1 for development)."
        )
    SECRET_KEY = "insecure-development-key-only-for-debug"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# Where uploads, embeddings, model artifacts and the first-look SQLite file live.
DATA_DIR = Path(os.environ.get("LABELHUB_DATA_DIR", str(BASE_DIR / "var"))).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "csp",
    "django_htmx",
    "django_rq",
    "rest_framework",
    # Unused since personal tokens are hashed (projects.PersonalToken); still installed because the
    # migration that moved the old plaintext tokens over reads its table.
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "projects",
    "annotation",
    "learning",
    "serving",
]

MIDDLEWARE = [
    "labelhub.middleware.server_timing",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lock-out raised during authentication into the lock-out page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "labelhub.urls"
WSGI_APPLICATION = "labelhub.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'labelhub.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if DATABASES["default"]["NAME"] != ":memory:":
        # A fresh clone has no var/ yet; SQLite will not create the folder.
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The first look (`make run`): the web process and a worker process write to one
    # file. Every transaction takes the write lock at BEGIN (IMMEDIATE) and waits up to
    # `timeout` seconds for it: a deferred transaction that read first and then writes
    # cannot wait (SQLite answers "database is locked" at once). WAL lets pages read
    # while a model update writes. The wait is long because an import inserts in one
    # transaction (50,000 rows hold the lock about 10 s): a label should wait, not fail.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": int(os.environ.get("LABELHUB_SQLITE_TIMEOUT", "60")),
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Jobs: RQ on Redis when REDIS_URL is set (`make run` starts a private Redis and a
# worker when none is given, see labelhub/firstlook.py); a process started without
# REDIS_URL falls back to an in-process runner (labelhub.jobs).
REDIS_URL = os.environ.get("REDIS_URL", "")
RQ_QUEUES = {
    name: {"URL": REDIS_URL or "redis://127.0.0.1:6379/0", "DEFAULT_TIMEOUT": 3600}
    # Imports have a queue of their own so a long import never holds the worker that trains; so do
    # quality reports (learning.jobs.report_project), which workers take after everything else:
    # a new model's suggestions never wait behind the cross-validation of the previous one.
    for name in ("default", "gpu", "imports", "reports")
}
if REDIS_URL:
    _redis_options = {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5}
    CACHES: dict[str, dict[str, object]] = {
        # Progress bars and short-lived page figures: with Redis down, reads miss and
        # writes are dropped (logged), so pages and label submits still answer.
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL,
                    "OPTIONS": {**_redis_options, "IGNORE_EXCEPTIONS": True}},
        # Per-key rate limits must not fail open: errors reach the throttle, which answers 503.
        "throttle": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL, "OPTIONS": _redis_options},
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    # A file cache is shared by every process on the machine and lives outside
    # database transactions, which is what import progress needs.
    _file_cache: dict[str, object] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cache" / "django"),
    }
    CACHES = {"default": _file_cache, "throttle": _file_cache}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "projects:list"
LOGOUT_REDIRECT_URL = "login"
# Sessions are read from the cache and written through to the database: one statement less on every
# request (the labelling page's submit + next item among them); a cache miss or Redis down reads the table.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# Password guessing: django-axes counts failed logins (the login page, the admin login, anything that
# calls authenticate()) per username and IP together, so one attacker cannot lock everyone out by
# username alone, and locks that pair out for a cool-off. Attempts live in the database (PostgreSQL,
# or the first-look SQLite file): they survive a restart, every web process sees them, and the admin
# lists and clears them ("Access attempts"); `manage.py axes_reset` clears them all.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = int(os.environ.get("LABELHUB_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("LABELHUB_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
AXES_HTTP_RESPONSE_CODE = 429
# Only failures are logged; a row for every successful login would grow without bound.
AXES_DISABLE_ACCESS_LOG = True
AXES_CLIENT_IP_CALLABLE = "labelhub.security.client_ip"
# Password-reset requests an hour from one address and for one e-mail address (0: no limit).
PASSWORD_RESET_LIMIT = int(os.environ.get("LABELHUB_PASSWORD_RESET_LIMIT", "5"))
# No banner on every manage.py command; lock-outs are still logged (as warnings).
AXES_VERBOSE = False

# Password reset mails: printed to the console in development, sent by SMTP otherwise.
EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "labelhub@localhost")
PASSWORD_RESET_TIMEOUT = int(os.environ.get("PASSWORD_RESET_TIMEOUT", str(60 * 60 * 24)))

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
MEDIA_ROOT = DATA_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Uploads
MAX_UPLOAD_MB = int(os.environ.get("LABELHUB_MAX_UPLOAD_MB", "500"))
MAX_TEXT_CHARS = int(os.environ.get("LABELHUB_MAX_TEXT_CHARS", "20000"))
# Files are streamed to disk, never held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("LABELHUB_MAX_JSON_MB", "20")) * 1024 * 1024
BULK_IMPORT_MAX_ROWS = int(os.environ.get("LABELHUB_BULK_MAX_ROWS", "10000"))
# Columns (CSV) or keys (JSON) a file may have; more is refused at upload with a clear message.
IMPORT_MAX_COLUMNS = int(os.environ.get("LABELHUB_IMPORT_MAX_COLUMNS", "1000"))
# An import with no progress for this long (worker killed, no worker on the "imports" queue) is failed.
IMPORT_STALE_SECONDS = int(os.environ.get("LABELHUB_IMPORT_STALE_SECONDS", "900"))

# Model: a local path or a name; the default is the packaged all-MiniLM-L6-v2.
ENCODER = os.environ.get("LABELHUB_ENCODER", "")
# auto: PyTorch on a GPU, ONNX Runtime (float) on CPU; or force torch, onnx or onnx-int8 (faster, less accurate).
ENCODER_BACKEND = os.environ.get("LABELHUB_ENCODER_BACKEND", "auto")
# Threads one process encodes with (0: all cores). One per process is fastest on a shared machine:
# more throughput comes from more worker processes.
ENCODER_THREADS = int(os.environ.get("LABELHUB_ENCODER_THREADS", "1"))
# Where the ONNX graphs exported from the encoder's weights are kept (written on first use). In the
# checkout, not under LABELHUB_DATA_DIR: a graph depends on the weights only, and every deployment,
# worker and test run on the machine shares it instead of exporting again.
ONNX_DIR = Path(os.environ.get("LABELHUB_ONNX_DIR", str(BASE_DIR / "var" / "cache" / "onnx")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # `Authorization: Api-Key <key>`: a project API key (scopes predict, import, read).
        "serving.keys.ApiKeyAuthentication",
        # `Authorization: Token <key>`, as before, but only a hash of each personal token is stored.
        "projects.tokens.PersonalTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Requests made as a user (personal token or session) are counted per user (USER_API_RATE);
    # project API keys have their own per-key limit (projects.access.CredentialRateThrottle).
    "DEFAULT_THROTTLE_CLASSES": ["projects.tokens.UserApiThrottle"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LabelHub API",
    "DESCRIPTION": "Import examples, read projects and taxonomies, get predictions. "
    "Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# HTTPS is the default when DEBUG is off: redirect to it, tell browsers to keep to it (HSTS) and send
# cookies only over it. LABELHUB_PLAIN_HTTP=1 turns all of that off for an intranet without TLS.
PLAIN_HTTP = env_bool("LABELHUB_PLAIN_HTTP", False)
HTTPS_ONLY = not DEBUG and not PLAIN_HTTP
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", HTTPS_ONLY)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS_ONLY)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600) if HTTPS_ONLY else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
# Only asks to be put on browsers' preload lists; an opt-in, since leaving a preload list takes months.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_HTTPS_PROXY", False) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

# Content-Security-Policy (django-csp): scripts, styles, images, fonts and connections from this
# origin only. No inline <script> and no inline event handlers anywhere (page JS is in static/js,
# chart data in <script type="application/json">, which is never executed); htmx is configured in
# base.html to need neither eval nor an injected <style>. The one allowance: style *attributes*
# (`style-src-attr 'unsafe-inline'`), which templates use for per-label colours and sizes; they
# cannot run script, and img-src/font-src keep them from loading anything from elsewhere. Swagger UI's
# icons are data: images.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# In development whitenoise serves straight from the app folders, no collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Workers run jobs in their own process instead of forking one per job: the
# encoder and a project's embeddings stay loaded between jobs, and torch's
# thread pools do not survive a fork safely.
RQ = {"WORKER_CLASS": "rq.worker.SimpleWorker"}

# Learning loop
TRAIN_DEBOUNCE_SECONDS = float(os.environ.get("LABELHUB_TRAIN_DEBOUNCE_SECONDS", "2"))
# A model update still queued or running after this long was lost (worker killed) and is re-queued.
TRAIN_STALE_SECONDS = int(os.environ.get("LABELHUB_TRAIN_STALE_SECONDS", "900"))
EMBED_BATCH = int(os.environ.get("LABELHUB_EMBED_BATCH", "2048"))

# Fine-tuning the encoder (learning/finetuning.py, the `gpu` queue). Auto: after a model update, when the labels
# have grown by FINETUNE_GROWTH since the last fine-tune and number at least FINETUNE_MIN_LABELS (also the
# least a fine-tune from the button needs). On by default: a CPU fine-tune costs minutes of one core on the worker
# that takes the `gpu` queue, at most once per 50 % more labels, and the candidate only replaces the model if better.
FINETUNE_AUTO = env_bool("LABELHUB_FINETUNE_AUTO", True)
FINETUNE_GROWTH = float(os.environ.get("LABELHUB_FINETUNE_GROWTH", "0.5"))
FINETUNE_MIN_LABELS = int(os.environ.get("LABELHUB_FINETUNE_MIN_LABELS", "200"))
# The share of labelled items held out (stratified) to compare the candidate with the current model.
FINETUNE_HELDOUT = float(os.environ.get("LABELHUB_FINETUNE_HELDOUT", "0.2"))
# Where fine-tuned encoders are kept (a folder every web and worker process reads: shared storage).
FINETUNE_DIR = Path(os.environ.get("LABELHUB_FINETUNE_DIR", str(DATA_DIR / "finetuned"))).resolve()
# "cpu", "cuda" or "auto" (CUDA when the worker has it); the method and the recipe overrides of
# learning.finetune.FinetuneConfig (empty: the device's defaults).
FINETUNE_DEVICE = os.environ.get("LABELHUB_FINETUNE_DEVICE", "auto")
FINETUNE_METHOD = os.environ.get("LABELHUB_FINETUNE_METHOD", "classifier")
FINETUNE_EPOCHS = int(os.environ.get("LABELHUB_FINETUNE_EPOCHS", "0"))
FINETUNE_MIN_STEPS = int(os.environ.get("LABELHUB_FINETUNE_MIN_STEPS", "0"))
FINETUNE_BATCH_SIZE = int(os.environ.get("LABELHUB_FINETUNE_BATCH_SIZE", "0"))
FINETUNE_MAX_LENGTH = int(os.environ.get("LABELHUB_FINETUNE_MAX_LENGTH", "0"))
# A running fine-tune whose worker has not written its heartbeat for this long is marked failed.
FINETUNE_STALE_SECONDS = int(os.environ.get("LABELHUB_FINETUNE_STALE_SECONDS", "120"))
SEED_SIZE = int(os.environ.get("LABELHUB_SEED_SIZE", "20"))

# Annotation queue
# An item served to an annotator is theirs for this long; then anyone may get it.
LEASE_SECONDS = int(os.environ.get("LABELHUB_LEASE_SECONDS", "900"))

# Prediction API (learning/serving.py, learning/keys.py, learning/webhooks.py)
PREDICT_BATCH_LIMIT = int(os.environ.get("LABELHUB_PREDICT_BATCH_LIMIT", "100"))
# Requests per API key, DRF rate syntax ("600/min", "20/s"); counted in the cache (Redis in production).
API_KEY_RATE = os.environ.get("LABELHUB_API_KEY_RATE", "600/min")
# Requests per user through the API (personal token or session), same syntax; counted in the default cache.
USER_API_RATE = os.environ.get("LABELHUB_USER_API_RATE", "600/min")
WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("LABELHUB_WEBHOOK_TIMEOUT_SECONDS", "5"))
# Seconds to wait before each retry of a failed delivery; one retry per entry, then the delivery is failed.
WEBHOOK_RETRY_DELAYS = [int(s) for s in env_list("LABELHUB_WEBHOOK_RETRY_DELAYS", "10,60,300,1800")]
# Webhooks go to public addresses only (no private, loopback, link-local or metadata targets: SSRF);
# these host names or IPs are exempt, for receivers on an internal network.
WEBHOOK_ALLOWED_HOSTS = [h.lower().strip("[]") for h in env_list("LABELHUB_WEBHOOK_ALLOWED_HOSTS", "")]
# DRF's parsers, with JSON nested too deep to decode answered 400 (labelhub/parsers.py).
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = [
    "labelhub.parsers.JSONParser", "rest_framework.parsers.FormParser", "rest_framework.parsers.MultiPartParser",
]
SPECTACULAR_SETTINGS["DESCRIPTION"] = (
    "Import examples, read projects and taxonomies, get predictions. Authenticate with a personal token "
    "(`Authorization: Token <key>`) or a project API key (`Authorization: Api-Key <key>`, scopes predict, "
    "import, read)."
)
