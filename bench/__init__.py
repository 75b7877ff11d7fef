"""MetTrack benchmarks: each ``bench/bench_*.py`` module has a ``main()`` that prints its figures."""

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parents[1]
#: The real post-contrast T1 beside the repository (../shared/data; never used for training or fitting),
#: which the segmentation benches read unless ``METTRACK_MRI`` names another.
DEFAULT_MRI = ROOT.parent / "shared" / "data" / "BraTS-MET-00110-000-t1c.nii.gz"


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
