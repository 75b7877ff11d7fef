"""MetTrack benchmarks: each ``bench/bench_*.py`` module has a ``main()`` that prints its figures."""


def setup_django() -> None:
    """Set Django up as the deployed processes run: DEBUG off, a throw-away secret key.

    (With DEBUG on Django records every query it runs, a cost the deployed service does not have.)
    The benchmarks talk only to in-process clients and their own test databases.
    """
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", os.urandom(32).hex())
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")
    import django

    django.setup()
