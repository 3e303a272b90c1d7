"""Commands that other distributions add to `lorafleet` (entry point group ``lorafleet.commands``).

lorafleet-workers brings `worker`, `trainer` and `models`; lorafleet-billing brings `billing`,
`prices`, `credits` and the `limits` commands under `tenants` and `keys`. An entry point named
``group.command`` goes under that group. A command whose distribution is not installed (a
gateway-only image asked for `lorafleet worker`) still exists and says which distribution it needs.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click
from lorafleet.cli.errors import NotConfigured

GROUP = "lorafleet.commands"

# What each known plugin command needs, for the message when it is missing.
PROVIDERS = {
    "worker": "lorafleet-workers", "trainer": "lorafleet-workers", "models": "lorafleet-workers",
    "billing": "lorafleet-billing", "prices": "lorafleet-billing", "credits": "lorafleet-billing",
    "tenants.limits": "lorafleet-billing", "keys.limits": "lorafleet-billing",
}


def _missing(name: str, distribution: str) -> click.Command:
    command = name.replace(".", " ")

    @click.command(name.rpartition(".")[2], help=f"(needs {distribution}, not installed here)",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def placeholder() -> None:
        raise NotConfigured(f"`lorafleet {command}` needs the {distribution} distribution, which is not "
                            f"installed here: pip install {distribution}")

    return placeholder


def _attach(root: click.Group, name: str, command: click.Command) -> None:
    parent_name, _, own = name.rpartition(".")
    parent = root.commands.get(parent_name) if parent_name else root
    if not isinstance(parent, click.Group):
        raise RuntimeError(f"entry point {GROUP}:{name}: no command group {parent_name!r} to put it under")
    parent.add_command(command, own)


def add_plugin_commands(root: click.Group) -> None:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name, ep in sorted(found.items()):
        command = ep.load()
        if not isinstance(command, click.Command):
            raise RuntimeError(f"entry point {GROUP}:{name} is {command!r}, not a click command")
        _attach(root, name, command)
    for name, distribution in PROVIDERS.items():
        if name not in found:
            _attach(root, name, _missing(name, distribution))
