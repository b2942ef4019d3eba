"""The Tempest exclude list (issue 24): one test a line with its reason, and only for a service the lab does not
run. Nothing may be excluded because the plugin or the lab breaks it."""

from __future__ import annotations

from lab import tempest

ALLOWED = ("Nova", "Glance", "Swift", "backup")


def test_every_excluded_test_names_a_service_the_lab_does_not_run():
    for line in tempest.EXCLUDE_LIST.read_text().splitlines():
        regex, _, reason = line.partition("#")
        if regex.strip():
            assert reason.strip().startswith(ALLOWED), f"no allowed reason: {line!r}"
    assert all(reason.startswith(ALLOWED) for reason in tempest.exclusions())


def test_the_rendered_config_keeps_every_section_and_value():
    text = tempest.render({"volume": {"backend_names": "ceph-hdd,ceph-ssd"}, "auth": {"admin_password": "a%b"}})
    assert "[volume]\nbackend_names = ceph-hdd,ceph-ssd\n" in text and "admin_password = a%b" in text
