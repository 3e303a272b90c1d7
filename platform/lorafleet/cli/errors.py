"""How a `lorafleet` command fails: one line (never a traceback) and an exit code that says whose fault it was.

Exit codes: 0 done; 1 the command ran and failed (not found, refused by the platform, database or
gateway unreachable, not configured); 2 the command line itself is wrong (unknown command or
option, a missing or malformed value: click's usage errors, raised before anything runs).

With ``--json`` the error is one JSON document on stdout, the OpenAI error envelope the API uses
(``{"error": {"message", "type", "param", "code"}}``), so a script reads stdout either way and
tells success from failure by the exit code. Without it the message goes to stderr.

An exception none of this knows is a bug: it keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
import msgspec
from lorafleet.core.errors import LoraFleetError
from lorafleet.core.settings import SettingsError

EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(click.ClickException):
    """A command that ran and failed; carries the envelope's type, code and param."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, error_type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.code = code
        self.param = param

    @classmethod
    def from_platform(cls, exc: LoraFleetError) -> CliError:
        return cls(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param)


class NotConfigured(CliError):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, code="not_configured", param=param)


class Unreachable(CliError):
    """The database or the gateway did not answer (down, wrong address, refused the connection)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, error_type="server_error", code=code)


def _usage_param(exc: click.UsageError) -> str | None:
    if isinstance(exc, click.BadParameter) and exc.param is not None:  # MissingParameter is one too
        param = exc.param
        if isinstance(param, click.Option):
            return max(param.opts, key=len)
        return param.human_readable_name
    if isinstance(exc, click.NoSuchOption | click.BadOptionUsage):
        return exc.option_name
    return None


def _usage_code(exc: click.UsageError) -> str:
    if isinstance(exc, click.MissingParameter):
        return "missing_argument"
    if isinstance(exc, click.BadParameter):
        return "invalid_argument"
    if isinstance(exc, click.NoSuchOption):
        return "unknown_option"
    return "usage_error"


def envelope(exc: click.ClickException) -> dict[str, dict[str, Any]]:
    if isinstance(exc, CliError):
        body = {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}
    elif isinstance(exc, click.UsageError):
        body = {"message": exc.format_message(), "type": "invalid_request_error", "param": _usage_param(exc),
                "code": _usage_code(exc)}
    else:  # raised by a command without our types (e.g. `up` when a process exits)
        body = {"message": exc.format_message(), "type": "server_error", "param": None, "code": "command_failed"}
    return {"error": body}


def as_click_error(exc: BaseException) -> click.ClickException | None:
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, LoraFleetError):
        return CliError.from_platform(exc)
    if isinstance(exc, SettingsError):  # a LORAFLEET_* variable that does not parse, wherever it was read
        return NotConfigured(str(exc))
    return None


def wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for JSON (looked up before parsing, so parse errors honour it too)."""
    options = list(args)
    if "--" in options:
        options = options[: options.index("--")]
    return "--json" in options


def report(exc: click.ClickException, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(envelope(exc)).decode())
    else:
        exc.show()


class LoraFleetGroup(click.Group):
    """The root group: runs a command and turns every known failure into its message and exit code."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:  # an embedding caller handles exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(EXIT_FAILED)
        except Exception as exc:
            error = as_click_error(exc)
            if error is None:
                raise
            report(error, wants_json(argv))
            sys.exit(error.exit_code)
        sys.exit(result if isinstance(result, int) else 0)  # an int is click's exit code (e.g. from --help)
