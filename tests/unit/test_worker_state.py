"""One schema for ``GET /lorafleet/state``: what the worker writes is what the supervisor and the gateway
read, and a missing or renamed key is an error, never a silent 0 or []."""

import msgspec
import pytest
from lorafleet.core.worker_state import AdapterResidency, WorkerStateReport, decode_report, encode_report

REPORT = WorkerStateReport(in_flight=2, served=7, idle_seconds=0.5, running=1.0, waiting=3.0, kv_cache_usage=0.25,
                           max_loras=4, max_cpu_loras=16,
                           adapters=AdapterResidency(slots=["adp_a"], cpu=["adp_b"], pinned=[], disk=["adp_a", "adp_c"],
                                                     disk_pinned=["adp_c"], running=["adp_a"]))


def test_a_report_round_trips():
    assert decode_report(encode_report(REPORT)) == REPORT


@pytest.mark.parametrize("key", ["in_flight", "idle_seconds", "max_loras", "adapters"])
def test_a_missing_key_is_an_error(key):
    document = msgspec.to_builtins(REPORT)
    del document[key]
    with pytest.raises(msgspec.ValidationError, match=key):
        decode_report(msgspec.json.encode(document))


def test_a_renamed_adapter_tier_is_an_error():
    document = msgspec.to_builtins(REPORT)
    document["adapters"]["gpu"] = document["adapters"].pop("slots")
    with pytest.raises(msgspec.ValidationError, match="slots"):
        decode_report(msgspec.json.encode(document))


def test_a_wrong_type_is_an_error_and_new_keys_are_allowed():
    document = msgspec.to_builtins(REPORT)
    with pytest.raises(msgspec.ValidationError):
        decode_report(msgspec.json.encode({**document, "in_flight": "2"}))
    assert decode_report(msgspec.json.encode({**document, "newer_field": 1})) == REPORT

