"""Every `lorafleet` command has a test that runs it against a real platform (as the route matrix does for routes).

``COVERED`` names, for each command path of the click tree, the tests that run it. Walking the tree
finds a command without an entry (add a test, then the entry) and an entry whose command is gone.
Each named test must exist as a top-level function of its file and spell the command's whole path
as one invocation's words (``run("keys", "limits", …)``, ``["billing", "close-period"]`` or
``"lorafleet keys limits"``), so neither an unrelated test nor one that merely mentions the last word
(``"limits"`` as a field name) counts. Test files
are read, not imported: tests never import one another.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import click
from lorafleet.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]

CLI = "tests/integration/test_cli.py"
PLATFORM = "tests/integration/test_cli_platform.py"
# `up` and `down` start and stop the whole platform (embedded database, worker, gateway): their test is
# the platform lifecycle's (up, the printed examples, down, down again).
LIFECYCLE = "tests/integration/test_up_down.py::test_up_examples_down_and_down_again"

COVERED: dict[str, list[str]] = {
    "up": [LIFECYCLE],
    "down": [LIFECYCLE],
    "gateway": [f"{PLATFORM}::test_gateway_command_serves_and_stops_cleanly"],
    "worker": [f"{PLATFORM}::test_worker_command_serves_and_registers"],
    "migrate": [f"{PLATFORM}::test_migrate_builds_a_fresh_database"],
    "settings": [f"{PLATFORM}::test_settings_prints_every_setting"],
    "models prepare": [f"{PLATFORM}::test_models_prepare_builds_the_model_offline"],
    "tenants create": [f"{CLI}::test_tenant_and_key_lifecycle"],
    "tenants list": [f"{CLI}::test_tenants_list_shows_status_limits_and_spend"],
    "tenants limits": [f"{CLI}::test_money_commands", f"{CLI}::test_tenants_list_shows_status_limits_and_spend"],
    "keys create": [f"{CLI}::test_tenant_and_key_lifecycle"],
    "keys list": [f"{CLI}::test_tenant_and_key_lifecycle"],
    "keys revoke": [f"{CLI}::test_tenant_and_key_lifecycle"],
    "keys limits": [f"{CLI}::test_key_limits_take_effect"],
    "prices set": [f"{CLI}::test_money_commands", f"{CLI}::test_tenants_list_shows_status_limits_and_spend"],
    "prices list": [f"{CLI}::test_money_commands"],
    "credits grant": [f"{CLI}::test_money_commands", f"{CLI}::test_tenants_list_shows_status_limits_and_spend"],
    "billing close-period": [f"{PLATFORM}::test_billing_jobs"],
    "billing export-stripe": [f"{PLATFORM}::test_billing_jobs"],
    "billing rebuild-rollups": [f"{PLATFORM}::test_billing_jobs"],
    "adapters upload": [f"{PLATFORM}::test_adapter_commands"],
    "adapters list": [f"{PLATFORM}::test_adapter_commands"],
    "adapters delete": [f"{PLATFORM}::test_adapter_commands"],
    "adapters download": [f"{PLATFORM}::test_adapter_release_commands"],
    "adapters alias set": [f"{PLATFORM}::test_adapter_release_commands"],
    "adapters alias list": [f"{PLATFORM}::test_adapter_release_commands"],
    "adapters alias rollback": [f"{PLATFORM}::test_adapter_release_commands"],
    "adapters alias delete": [f"{PLATFORM}::test_adapter_release_commands"],
    "workers list": [f"{PLATFORM}::test_workers_list"],
    "fine-tune create": ["tests/integration/test_fine_tuning.py::test_fine_tune_commands"],
    "fine-tune list": ["tests/integration/test_fine_tuning.py::test_fine_tune_commands"],
    "fine-tune show": ["tests/integration/test_fine_tuning.py::test_fine_tune_commands"],
    "fine-tune events": ["tests/integration/test_fine_tuning.py::test_fine_tune_commands"],
    "fine-tune cancel": ["tests/integration/test_fine_tuning.py::test_fine_tune_commands"],
    "batches create": ["tests/integration/test_batches.py::test_batch_commands"],
    "batches list": ["tests/integration/test_batches.py::test_batch_commands"],
    "batches show": ["tests/integration/test_batches.py::test_batch_commands"],
    "batches cancel": ["tests/integration/test_batches.py::test_batch_commands"],
    "batches download": ["tests/integration/test_batches.py::test_batch_commands"],
    "trainer": ["tests/integration/test_fine_tuning.py::test_the_sdk_fine_tunes_a_model_and_it_is_served_at_once"],
    "dashboard link": [f"{PLATFORM}::test_dashboard_link_signs_in_once"],
    "audit list": ["tests/inprocess/test_audit_cli.py::test_every_changing_cli_command_leaves_one_event"],
    "webhooks deliveries": ["tests/inprocess/test_audit_cli.py::test_webhook_delivery_log_and_replay"],
    "webhooks replay": ["tests/inprocess/test_audit_cli.py::test_webhook_delivery_log_and_replay"],
}


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every runnable command under ``group``, as space-separated paths (``"keys limits"``)."""
    paths = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append(" ".join((*prefix, name)))
    return paths


@cache
def _functions(path: str) -> dict[str, ast.AST]:
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _words(node: ast.AST) -> list[str]:
    """The words of the string constants directly in one call's arguments or one list/tuple, in order."""
    items = (list(node.args) + [keyword.value for keyword in node.keywords]) if isinstance(node, ast.Call) \
        else list(node.elts) if isinstance(node, ast.List | ast.Tuple) else [node]
    words: list[str] = []
    for item in items:
        if isinstance(item, ast.Starred):
            item = item.value
        if isinstance(item, ast.Constant) and isinstance(item.value, str):
            words += item.value.split()
    return words


def runs_command(node: ast.AST, path: str) -> bool:
    """Whether some invocation in ``node`` spells ``path``'s words one after another."""
    wanted = path.split()
    for child in ast.walk(node):
        if isinstance(child, ast.Call | ast.List | ast.Tuple | ast.Constant):
            words = _words(child)
            if any(words[i:i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1)):
                return True
    return False


def test_the_check_wants_the_whole_path():
    mentions_the_leaf = ast.parse('def test_x():\n    run("keys", "list")\n    body = {"limits": 1}\n')
    runs_it = ast.parse('def test_y():\n    run(*BASE, "keys", "limits", "--rpm", "5")\n')
    assert not runs_command(mentions_the_leaf, "keys limits")
    assert runs_command(runs_it, "keys limits")
    assert runs_command(ast.parse('x = "lorafleet billing close-period --period 2026-01"'), "billing close-period")


def test_the_walk_sees_nested_commands():
    paths = command_paths(cli)
    assert {"up", "keys limits", "billing close-period", "tenants list"} <= set(paths)
    assert "keys" not in paths and "billing" not in paths  # groups are not commands


def test_every_command_has_a_test():
    paths = set(command_paths(cli))
    missing = sorted(paths - COVERED.keys())
    assert not missing, f"commands without a test (write one, then add it to COVERED): {missing}"
    gone = sorted(COVERED.keys() - paths)
    assert not gone, f"COVERED names commands that no longer exist: {gone}"


def test_each_named_test_exists_and_runs_its_command():
    problems = []
    for path, tests in sorted(COVERED.items()):
        assert tests, f"{path}: no test named"
        for reference in tests:
            file, _, function = reference.partition("::")
            if not (ROOT / file).is_file():
                problems.append(f"{path}: {file} does not exist")
                continue
            node = _functions(file).get(function)
            if node is None or not function.startswith("test_"):
                problems.append(f"{path}: {reference} is not a test function")
            elif not runs_command(node, path):
                problems.append(f"{path}: {reference} never runs `lorafleet {path}`")
    assert not problems, "\n".join(problems)
