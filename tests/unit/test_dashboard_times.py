"""The usage page's date-time pickers speak the browser's format; /v1/usage speaks RFC 3339."""

from lorafleet.dashboard.pages import _picker_to_rfc3339, _rfc3339_to_picker


def test_picker_values_become_utc_rfc3339_and_back():
    assert _picker_to_rfc3339("2026-11-01T09:30") == "2026-11-01T09:30:00Z"
    assert _picker_to_rfc3339("2026-11-01T09:30:15") == "2026-11-01T09:30:15Z"
    for typed in ("2026-11-01T09:30:00+02:00", "1764000000", "yesterday"):
        assert _picker_to_rfc3339(typed) == typed  # left for parse_query to accept or name as wrong
    assert _rfc3339_to_picker("2026-11-01T09:30:00+02:00") == "2026-11-01T07:30"
    assert _rfc3339_to_picker("yesterday") == _rfc3339_to_picker(None) == ""
