"""WSGI entry point of MetTrack (``gunicorn config.wsgi``).

The process warms up once the application is loaded (:func:`config.warmup.warm_up_process`): uploads
are validated, de-identified and stored in the web process.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

from config.warmup import warm_up_process  # noqa: E402 - after Django is set up

warm_up_process()
