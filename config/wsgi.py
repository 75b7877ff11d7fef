"""WSGI entry point of MetTrack (``gunicorn -c docker/gunicorn.conf.py config.wsgi``).

The process warms up once the application is loaded (:func:`config.warmup.warm_up_process`): as a web
process when a broker takes the jobs (no network code is loaded), as web and worker in embedded mode
(the demo), where the jobs run in this process.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

from django.conf import settings  # noqa: E402 - after Django is set up

from config.warmup import warm_up_process  # noqa: E402

warm_up_process("all" if getattr(settings, "CELERY_EMBEDDED", False) else "web")
