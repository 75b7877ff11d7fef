"""The suite's Hypothesis profile (tests/conftest.py) does not depend on how busy the machine is."""

from hypothesis import HealthCheck, settings


def test_the_loaded_profile_has_no_deadline_and_no_too_slow_check() -> None:
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_a_test_with_its_own_settings_inherits_the_profile() -> None:
    """``@settings(max_examples=...)`` on a test keeps the profile's deadline and health checks."""
    own = settings(max_examples=5)
    assert own.deadline is None and HealthCheck.too_slow in own.suppress_health_check
