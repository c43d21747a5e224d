"""The suite itself: it must pass on a loaded machine, not only on an idle one."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def test_property_tests_have_no_deadline_and_no_too_slow_health_check() -> None:
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_settings_a_test_sets_for_itself_keep_the_rest_of_the_profile() -> None:
    own = settings(max_examples=20)  # as `@settings(max_examples=...)` on a test
    assert own.deadline is None and HealthCheck.too_slow in own.suppress_health_check
