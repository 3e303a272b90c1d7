"""The metering package's contracts with its SQL: named ledger columns, and every admission verdict."""

from __future__ import annotations

import re
from pathlib import Path

from lorafleet.billing.ledger_row import COLUMNS, Endpoint, LedgerRow, Outcome
from lorafleet.db import queries
from lorafleet.gateway.metering.admission import Verdict

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def test_the_ledger_insert_binds_exactly_the_named_columns_in_order():
    sql = queries.insert_usage_rows
    unnest = re.search(r"unnest\((.*?)\)\s*AS t\((.*?)\)", sql, re.S)
    assert unnest, "insert_usage_rows unnests one array per column"
    parameters = re.findall(r"\$(\d+)::(\w+)\[\]", unnest.group(1))
    assert [int(number) for number, _ in parameters] == list(range(1, len(COLUMNS) + 1))
    assert [sql_type for _, sql_type in parameters] == [sql_type for _, sql_type in COLUMNS]
    names = [name.strip() for name in unnest.group(2).split(",")]
    assert names == [name for name, _ in COLUMNS], "the unnest aliases are the columns, in COLUMNS order"
    inserted = re.search(r"INSERT INTO usage_ledger \((.*?)\)", sql, re.S).group(1)
    assert [name.strip() for name in inserted.split(",")] == names
    assert sorted(names) == sorted(LedgerRow.__struct_fields__), "every LedgerRow field is bound, and only those"


def _latest_check(column: str) -> set[str]:
    """The values the ledger's CHECK on ``column`` allows, as the last migration that set it says."""
    joined = "\n".join(path.read_text() for path in sorted(MIGRATIONS.glob("*.sql")))
    ledger = ";".join(s for s in joined.split(";") if "usage_ledger" in s)  # other tables' CHECKs are theirs
    checks = re.findall(rf"CHECK \({column} IN \(([^)]*)\)\)", ledger)
    assert checks, f"no CHECK on {column}"
    return set(re.findall(r"'([^']+)'", checks[-1]))


def test_endpoints_and_outcomes_are_exactly_what_the_ledger_allows():
    assert {endpoint.value for endpoint in Endpoint} == _latest_check("endpoint")
    assert {outcome.value for outcome in Outcome} == _latest_check("outcome")


def test_every_verdict_the_admission_function_returns_is_an_enum_member():
    function = "\n".join(path.read_text() for path in sorted(MIGRATIONS.glob("*.sql")))
    body = function[function.rindex("CREATE FUNCTION lorafleet_admit("):]  # its latest definition
    body = body[: body.index("$$;", body.index("$$") + 2)]
    returned = set(re.findall(r"verdict := '(\w+)'", body))
    assert returned == {verdict.value for verdict in Verdict}


def test_admission_functions_admit_one_request_and_no_lease_function_survives():
    """Admission leases left the tree (migrations/0015): the latest lorafleet_admit takes no unit count,
    and every migration that created a lease function is followed by one that drops it."""
    texts = [path.read_text() for path in sorted(MIGRATIONS.glob("*.sql"))]
    joined = "\n".join(texts)
    latest = joined[joined.rindex("CREATE FUNCTION lorafleet_admit("):]
    signature = latest[: latest.index(")")]
    assert "p_units" not in signature and signature.count("p_") == 6
    for name in ("lorafleet_lease(", "lorafleet_release_leases("):
        assert joined.rindex(f"DROP FUNCTION IF EXISTS {name}") > joined.rindex(f"CREATE FUNCTION {name}")


def test_every_named_query_is_called_by_the_code():
    """A named query nothing calls is dead SQL: the migrations test would keep preparing it forever."""
    source = "\n".join(path.read_text() for root in ("platform", "billing", "workers")
                       for path in (MIGRATIONS.parent / root).rglob("*.py"))
    unused = [name for name, _ in queries.items() if not re.search(rf"\bqueries\.{name}\b", source)]
    assert not unused, f"named queries nothing calls: {unused}"
