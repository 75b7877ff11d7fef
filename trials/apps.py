"""App configuration of the trials app."""

from django.apps import AppConfig


class TrialsConfig(AppConfig):
    """Trials: data model, services, REST API."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "trials"
    verbose_name = "Trials"

    def ready(self) -> None:
        # Schema extensions register themselves when their module is imported.
        from trials import auth_events
        from trials.api import authentication, schema  # noqa: F401

        auth_events.connect()
