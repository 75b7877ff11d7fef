"""App configuration of the trials app."""

from django.apps import AppConfig


class TrialsConfig(AppConfig):
    """Trials: data model, services, REST API."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "trials"
    verbose_name = "Trials"
