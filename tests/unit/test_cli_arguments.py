"""The CLI's argument types and error reporting: bad input is a click usage error naming the option (exit 2),
never a traceback; under --json every error is the API's envelope on stdout.

These run the real `lorafleet` command group in-process (click's CliRunner). Every case here fails while
parsing, before a command would open the database, so none needs one.
"""

from __future__ import annotations

import datetime as dt
import json

import click
import pytest
from click.testing import CliRunner
from lorafleet.billing.accounts import Balance
from lorafleet.billing.roster import account_status
from lorafleet.cli.errors import wants_json
from lorafleet.cli.main import cli
from lorafleet.cli.params import (
    CLEARED,
    CREDIT,
    MONTH,
    PER_MINUTE,
    SPEND_LIMIT,
    TENANT_ID,
    TIMESTAMP,
    format_micro_usd,
    parse_micro_usd,
)


@pytest.mark.parametrize(("text", "micro"), [
    ("9000000", 9_000_000),            # the README's form: whole micro-USD
    ("9_000_000", 9_000_000),
    ("0", 0),
    ("$1.5", 1_500_000),               # dollars, said so
    ("$1.50", 1_500_000),
    ("1.5usd", 1_500_000),
    ("1.5 USD", 1_500_000),
    ("$0.000001", 1),
    ("0.000001usd", 1),
    ("$.25", 250_000),
    ("$1.0000000", 1_000_000),         # trailing zeros beyond 6 decimals are still exact
    ("$92233720368547.758070", 92_233_720_368_547_758_070),  # no float on the way: every digit kept
    ("-$2", -2_000_000),
    ("$-2", -2_000_000),
    ("-2.25usd", -2_250_000),
    ("-7", -7),
])
def test_money_parses_exactly(text, micro):
    assert parse_micro_usd(text) == micro


@pytest.mark.parametrize(("text", "reason"), [
    ("1.5", "not a whole number of micro-USD"),    # ambiguous: never guessed
    ("$1.0000001", "more than 6 decimals"),
    ("0.0000001usd", "more than 6 decimals"),
    ("$1.0000000000000000000000000000001", "more than 6 decimals"),  # beyond Decimal's default precision
    ("NaN", "is not an amount"),
    ("$nan", "is not an amount"),
    ("inf", "is not an amount"),
    ("$Infinity", "is not an amount"),
    ("1e6", "is not an amount"),
    ("$1e6", "is not an amount"),
    ("abc", "is not an amount"),
    ("$", "is not an amount"),
    ("$1.", "not a dollar amount"),
    ("$1.2.3", "not a dollar amount"),
    ("-$-1", "two signs"),
    ("9" * 100, "too long"),
])
def test_money_refuses_what_it_cannot_represent(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_micro_usd(text)


def test_money_formats_exactly():
    assert format_micro_usd(1_500_000) == "$1.500000"
    assert format_micro_usd(1) == "$0.000001"
    assert format_micro_usd(-1_000_001) == "-$1.000001"
    assert format_micro_usd(123_456_789_012_345) == "$123,456,789.012345"
    assert format_micro_usd(None) == "none"
    for micro in (0, 1, 999_999, 1_000_000, 2**63 - 1, -(2**63 - 1)):
        shown = format_micro_usd(micro).replace(",", "")
        assert parse_micro_usd(shown) == micro


def test_types_convert_and_refuse():
    assert SPEND_LIMIT.convert("none", None, None) is CLEARED
    assert SPEND_LIMIT.convert("NONE", None, None) is CLEARED
    assert SPEND_LIMIT.convert("$50", None, None) == 50_000_000
    with pytest.raises(click.BadParameter, match="negative"):
        SPEND_LIMIT.convert("-$1", None, None)
    with pytest.raises(click.BadParameter, match="largest amount"):
        SPEND_LIMIT.convert(str(2**63), None, None)
    assert CREDIT.convert("-$1", None, None) == -1_000_000
    with pytest.raises(click.BadParameter, match="must not be 0"):
        CREDIT.convert("0", None, None)
    assert PER_MINUTE.convert("60", None, None) == 60
    assert PER_MINUTE.convert("none", None, None) is CLEARED
    for bad in ("0", "abc", "1.5", str(2**31)):
        with pytest.raises(click.BadParameter):
            PER_MINUTE.convert(bad, None, None)
    assert TENANT_ID.convert("ten_abc123", None, None) == "ten_abc123"
    for bad in ("acme", "key_abc", "ten_", "ten_a-b", "ten_" + "a" * 80):
        with pytest.raises(click.BadParameter, match="not a tenant id"):
            TENANT_ID.convert(bad, None, None)
    assert MONTH.convert("2026-11", None, None) == "2026-11"
    for bad in ("2026-13", "2026-00", "January", "2026-1", "26-11"):
        with pytest.raises(click.BadParameter, match="not a month"):
            MONTH.convert(bad, None, None)
    assert TIMESTAMP.convert("2027-01-01", None, None) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert TIMESTAMP.convert("2027-01-01T12:00:00+02:00", None, None) == dt.datetime(2027, 1, 1, 10, tzinfo=dt.UTC)
    with pytest.raises(click.BadParameter, match="ISO 8601"):
        TIMESTAMP.convert("tomorrow", None, None)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


# (command line, the option click must name, a phrase of its message)
BAD_ARGUMENTS = [
    (["keys", "limits", "key_abc", "--rpm", "abc"], "--rpm", "'abc' is not a valid integer"),
    (["keys", "limits", "key_abc", "--tpm", "0"], "--tpm", "not in the range"),
    (["keys", "limits", "nokey", "--rpm", "5"], "KEY_ID", "not an API key id"),
    (["tenants", "limits", "--tenant", "ten_abc", "--monthly-spend-limit", "1.5"], "--monthly-spend-limit",
     "for dollars write $1.5 or 1.5usd"),
    (["tenants", "limits", "--tenant", "ten_abc", "--monthly-spend-limit", "nan"], "--monthly-spend-limit",
     "is not an amount"),
    (["tenants", "limits", "--tenant", "ten_abc", "--monthly-spend-limit", "$0.0000001"], "--monthly-spend-limit",
     "more than 6 decimals"),
    (["tenants", "limits", "--tenant", "ten_abc", "--monthly-spend-limit", "-5"], "--monthly-spend-limit", "negative"),
    (["tenants", "limits", "--tenant", "ten_abc", "--max-concurrent", "many"], "--max-concurrent", "not a valid integer"),
    (["tenants", "limits", "--tenant", "acme"], "--tenant", "not a tenant id"),
    (["tenants", "limits", "--tenant", "ten_abc", "--mode", "free"], "--mode", "'free' is not one of"),
    (["credits", "grant", "--tenant", "ten_abc", "--amount", "1.5"], "--amount", "not a whole number of micro-USD"),
    (["credits", "grant", "--tenant", "ten_abc", "--amount", "0"], "--amount", "must not be 0"),
    (["prices", "set", "m", "--prompt", "-1", "--completion", "1"], "--prompt", "negative"),
    (["prices", "set", "m", "--prompt", "1", "--completion", "1", "--effective-at", "soon"], "--effective-at",
     "ISO 8601"),
    (["keys", "create", "--tenant", "ten_abc", "--scope", "root"], "--scope", "'root' is not one of"),
    (["keys", "revoke", "abc"], "KEY_ID", "not an API key id"),
    (["billing", "close-period", "--month", "January"], "--month", "write it like 2026-11"),
    (["adapters", "delete", "support-bot"], "ADAPTER_ID", "not an adapter id"),
    (["adapters", "upload", "/nonexistent/adapter", "--name", "x"], "PATH", "does not exist"),
    (["dashboard", "link", "--tenant", "nope"], "--tenant", "not a tenant id"),
]


@pytest.mark.parametrize(("args", "param", "phrase"), BAD_ARGUMENTS)
def test_bad_arguments_are_usage_errors_naming_the_option(args, param, phrase):
    human = _run(*args)
    assert human.exit_code == 2, human.output
    assert f"Invalid value for '{param}'" in human.stderr and phrase in human.stderr
    assert human.stdout == "" and "Traceback" not in human.output
    assert human.exception is None or isinstance(human.exception, SystemExit)

    machine = _run(*args, "--json")
    assert machine.exit_code == 2 and machine.stderr == ""
    error = json.loads(machine.stdout)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_argument"
    assert error["param"] == param and phrase in error["message"]


@pytest.mark.parametrize(("args", "param", "code"), [
    (["keys", "create", "--json"], "--tenant", "missing_argument"),
    (["keys", "create", "--tenant", "ten_abc", "--jsn", "--json"], "--jsn", "unknown_option"),
    (["tenants", "frobnicate", "--json"], None, "usage_error"),
])
def test_other_usage_errors_under_json(args, param, code):
    result = _run(*args)
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_help_and_no_arguments():
    assert _run("--help").exit_code == 0 and "tenants" in _run("--help").stdout
    assert _run("tenants", "list", "--help").exit_code == 0


def test_json_is_recognised_before_parsing():
    assert wants_json(["keys", "list", "--json"])
    assert not wants_json(["keys", "list"])
    assert not wants_json(["adapters", "upload", "--", "--json"])  # after "--" it is a file name


def _balance(**overrides) -> Balance:
    fields = dict(tenant_id="ten_a", tenant_name="a", billing_mode="postpaid", currency="usd",
                  period_start=dt.date(2026, 12, 1), period_spent_micro_usd=0, monthly_spend_limit_micro_usd=None,
                  credit_granted_micro_usd=0, credit_remaining_micro_usd=0, reserved_micro_usd=0, in_flight=0,
                  max_concurrent_requests=None)
    fields.update(overrides)
    # The exact counters follow the rounded ones here; account_status reads the rounded ones admission compares.
    fields.setdefault("period_spent_pico_usd", fields["period_spent_micro_usd"] * 1_000_000)
    fields.setdefault("credit_remaining_pico_usd", fields["credit_remaining_micro_usd"] * 1_000_000)
    return Balance(**fields)


def test_account_status():
    assert account_status(_balance()) == "active"  # postpaid without credit is normal
    assert account_status(_balance(monthly_spend_limit_micro_usd=10, period_spent_micro_usd=9)) == "active"
    assert account_status(_balance(monthly_spend_limit_micro_usd=10, period_spent_micro_usd=10)) == "spend_limit_reached"
    assert account_status(_balance(monthly_spend_limit_micro_usd=0)) == "spend_limit_reached"
    assert account_status(_balance(billing_mode="prepaid")) == "out_of_credit"
    assert account_status(_balance(billing_mode="prepaid", credit_remaining_micro_usd=1)) == "active"
    # As admission compares: a fraction of a micro-dollar past the limit counts (rounded up), none short of it does.
    assert account_status(_balance(monthly_spend_limit_micro_usd=10, period_spent_micro_usd=9,
                                   period_spent_pico_usd=9_000_001)) == "spend_limit_reached"
    assert account_status(_balance(billing_mode="prepaid", credit_remaining_micro_usd=0,
                                   credit_remaining_pico_usd=1)) == "active"


def test_a_setting_that_does_not_parse_is_one_line(tmp_path):
    """Read wherever it is (here by `tenants list`, and by `down` in its own module): exit 1, the variable named.
    A command reads only its role's settings: another role's bad value does not stop it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_GATEWAY_PORT="eighty", LORAFLEET_DATA_DIR=str(tmp_path))
    listed = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "tenants", "list", "--json"], env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 1 and json.loads(listed.stdout)["error"]["message"].startswith("No database")
    env.update(LORAFLEET_LOG_FORMAT="xml")  # every process reads this one
    listed = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "tenants", "list", "--json"], env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 1 and listed.stderr == ""
    error = json.loads(listed.stdout)["error"]
    assert error["code"] == "not_configured" and error["message"].startswith("LORAFLEET_LOG_FORMAT: ")
    down = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 1 and down.stderr.strip().splitlines() == [f"Error: {error['message']}"]
