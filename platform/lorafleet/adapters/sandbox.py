"""Inspect an upload in a child process under resource limits: unpack it, choose its base model, validate it.

Archives and JSON from strangers are where a parser bug costs the most; the checks in
:mod:`~lorafleet.adapters.archive` and :mod:`~lorafleet.adapters.validation` bound the work, and this
module bounds it again, outside the gateway. ``python -m lorafleet.adapters.sandbox`` sets its own
limits before it reads anything — address space (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), the
size of any file it writes (``RLIMIT_FSIZE``, at the byte budget), no core dumps — then reads one
JSON request on stdin and writes one JSON reply on stdout (msgspec Structs below).

The parent (:func:`inspect_upload`) reads at most :data:`MAX_REPLY_BYTES` of the reply and keeps at
most :data:`STDERR_EXCERPT_BYTES` of stderr for its log, never for a message. A client error raised
in the child (``AdapterInvalid``, ``InvalidRequest``, …) is raised again in the parent as the same
class with the same message, param and code. A child that runs out of memory or CPU, is killed or
outlives its wall-clock allowance becomes a 400 ``AdapterInvalid`` ("the upload is too large or too
complex to inspect"). Only a child that breaks the protocol (a bug) is a :class:`SandboxError` (500).

The child runs with ``-P`` (no script or working folder on ``sys.path``), from ``/``, with a trimmed
environment (no database URL or API keys), so files it unpacks can never be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import resource
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from lorafleet.adapters.architecture import Architecture
from lorafleet.adapters.archive import adapter_files
from lorafleet.adapters.selection import select_base_model
from lorafleet.adapters.validation import (
    AdapterInvalid,
    BaseModelSpec,
    ValidAdapter,
    validate_files,
)
from lorafleet.core import errors

log = structlog.get_logger("lorafleet.sandbox")

TOO_COMPLEX = "the upload is too large or too complex to inspect"
MAX_REQUEST_BYTES = 1 << 20  # part names and base models: far below this
MAX_REPLY_BYTES = 1 << 20  # a config (<= 64 KiB), a few names and numbers, or one clipped message
STDERR_EXCERPT_BYTES = 2048
_READ = 64 * 1024
# Variables the child may see: enough to find Python and the package, nothing secret.
_CHILD_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "TMPDIR", "VIRTUAL_ENV")


@dataclass(frozen=True)
class SandboxLimits:
    max_files: int  # files in an archive
    max_bytes: int  # decompressed bytes (headers included) and total upload
    memory_bytes: int = 1 << 30
    cpu_seconds: int = 60


@dataclass(frozen=True)
class Inspection:
    base_model: str  # the chosen base model's name
    adapter: ValidAdapter  # weights_path points inside workdir


class SandboxError(RuntimeError):
    """The inspection child broke the protocol (a bug, not the upload's fault): answered as a 500."""


# ---- protocol -------------------------------------------------------------------------------

class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    architecture: Architecture | None
    max_lora_rank: int


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    parts: list[tuple[str, str]]
    workdir: str
    bases: list[_Base]
    requested_base: str | None
    max_files: int
    max_bytes: int


class _Adapter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    config: dict[str, Any]
    rank: int
    lora_alpha: float
    target_modules: list[str]
    weights_path: str
    sha256: str
    size_bytes: int


class Inspected(msgspec.Struct, frozen=True, tag="inspected"):
    base_model: str
    adapter: _Adapter


class Refused(msgspec.Struct, frozen=True, tag="refused"):
    error: str  # the ClientError subclass's name
    message: str
    param: str | None
    code: str | None
    status: int


class Exhausted(msgspec.Struct, frozen=True, tag="exhausted"):
    resource: str


class Crashed(msgspec.Struct, frozen=True, tag="crashed"):
    error: str  # the exception's type: the traceback went to stderr


Reply = Inspected | Refused | Exhausted | Crashed
_reply_decoder = msgspec.json.Decoder(Reply)
_encoder = msgspec.json.Encoder()


def _client_errors() -> dict[str, type[errors.ClientError]]:
    """The errors a child may report, by name: the hierarchy's client errors and AdapterInvalid."""
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, errors.ClientError)]
    return {cls.__name__: cls for cls in (*classes, AdapterInvalid)}


# ---- parent ---------------------------------------------------------------------------------

async def inspect_upload(parts: list[tuple[str, Path]], workdir: Path, bases: list[BaseModelSpec],
                         requested_base: str | None, limits: SandboxLimits) -> Inspection:
    """Unpack ``parts`` (client file name, local path inside ``workdir``), choose the base model and
    validate the adapter, all in a child process under ``limits``."""
    workdir = workdir.resolve()
    for _, path in parts:
        if not path.resolve().is_relative_to(workdir):
            raise ValueError(f"uploaded part {path} is not inside the work folder {workdir}")
    request = _Request(
        parts=[(name, str(path)) for name, path in parts], workdir=str(workdir),
        bases=[_Base(base.name, base.architecture, base.max_lora_rank) for base in bases],
        requested_base=requested_base, max_files=limits.max_files, max_bytes=limits.max_bytes,
    )
    process = await asyncio.create_subprocess_exec(
        *_command(limits), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd="/", env=_child_environment(),
    )
    try:
        reply, excerpt = await asyncio.wait_for(_exchange(process, _encoder.encode(request)),
                                                timeout=2 * limits.cpu_seconds + 10)
    except TimeoutError:
        log.warning("adapter_inspection_timeout", seconds=2 * limits.cpu_seconds + 10)
        raise AdapterInvalid(TOO_COMPLEX, param="file") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return _conclude(reply, excerpt, process.returncode, workdir, bases)


def _command(limits: SandboxLimits) -> list[str]:
    return [sys.executable, "-P", "-m", "lorafleet.adapters.sandbox",
            "--memory-bytes", str(limits.memory_bytes), "--cpu-seconds", str(limits.cpu_seconds),
            "--file-bytes", str(limits.max_bytes)]


def _child_environment() -> dict[str, str]:
    environment = {name: os.environ[name] for name in _CHILD_ENVIRONMENT if name in os.environ}
    # One thread each: numpy's BLAS would otherwise reserve memory per core under RLIMIT_AS.
    environment.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return environment


async def _exchange(process: asyncio.subprocess.Process, request: bytes) -> tuple[bytes | None, bytes]:
    """(the reply, or None when it grew past MAX_REPLY_BYTES; the start of stderr), once the child exited."""
    async def send() -> None:
        try:
            process.stdin.write(request)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child died early: its exit status tells
        finally:
            process.stdin.close()

    async def receive() -> bytes | None:
        chunks, size = [], 0
        while chunk := await process.stdout.read(_READ):
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                process.kill()
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def excerpt() -> bytes:
        kept = b""
        while chunk := await process.stderr.read(_READ):
            kept += chunk[: STDERR_EXCERPT_BYTES - len(kept)]  # the rest is read and dropped
        return kept

    _, reply, start_of_stderr = await asyncio.gather(send(), receive(), excerpt())
    await process.wait()
    return reply, start_of_stderr


def _conclude(data: bytes | None, excerpt: bytes, returncode: int | None, workdir: Path,
              bases: list[BaseModelSpec]) -> Inspection:
    stderr = excerpt.decode("utf-8", "replace")
    if data is None:
        log.error("adapter_inspection_reply_too_large", limit=MAX_REPLY_BYTES, stderr=stderr)
        raise SandboxError(f"the inspection child's reply exceeded {MAX_REPLY_BYTES} bytes")
    try:
        reply = _reply_decoder.decode(data)
    except msgspec.DecodeError:
        if returncode != 0:  # killed (CPU limit, OOM killer) or died before it could answer
            log.warning("adapter_inspection_died", returncode=returncode, stderr=stderr)
            raise AdapterInvalid(TOO_COMPLEX, param="file") from None
        log.error("adapter_inspection_bad_reply", returncode=returncode, stderr=stderr)
        raise SandboxError("the inspection child sent no valid reply") from None
    match reply:
        case Inspected(base_model=base_model, adapter=adapter):
            weights = Path(adapter.weights_path)
            if not weights.resolve().is_relative_to(workdir) or base_model not in {base.name for base in bases}:
                raise SandboxError("the inspection child answered with a path or base model it was not given")
            return Inspection(base_model, ValidAdapter(
                config=adapter.config, rank=adapter.rank, lora_alpha=adapter.lora_alpha,
                target_modules=adapter.target_modules, weights_path=weights, sha256=adapter.sha256,
                size_bytes=adapter.size_bytes,
            ))
        case Refused(error=name, message=message, param=param, code=code):
            cls = _client_errors().get(name, AdapterInvalid)
            raise cls(message, param=param, code=code)
        case Exhausted(resource=exhausted):
            log.info("adapter_inspection_exhausted", resource=exhausted)
            raise AdapterInvalid(TOO_COMPLEX, param="file")
        case Crashed(error=name):
            log.error("adapter_inspection_crashed", error=name, stderr=stderr)
            raise SandboxError(f"adapter inspection failed ({name})")
    raise SandboxError("unreachable")  # pragma: no cover - the match is exhaustive


# ---- child ----------------------------------------------------------------------------------

_EXHAUSTED_MEMORY = _encoder.encode(Exhausted("memory"))  # ready before memory can run out


def _limit(kind: int, value: int) -> None:
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def _apply_limits(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_AS, memory_bytes)
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    ceiling = cpu_seconds + 1 if cpu_hard == resource.RLIM_INFINITY else cpu_hard
    # SIGXCPU at the soft limit ends the process; the hard limit (SIGKILL) one second later.
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_seconds, ceiling), min(cpu_seconds + 1, ceiling)))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG instead
    _limit(resource.RLIMIT_FSIZE, file_bytes)


def _inspect(request: _Request) -> Inspected:
    files = adapter_files([(name, Path(path)) for name, path in request.parts], Path(request.workdir),
                          max_files=request.max_files, max_bytes=request.max_bytes)
    bases = [BaseModelSpec(base.name, base.architecture, base.max_lora_rank) for base in request.bases]
    base = select_base_model(bases, request.requested_base, files)
    valid = validate_files(files, base)
    return Inspected(base.name, _Adapter(
        config=valid.config, rank=valid.rank, lora_alpha=valid.lora_alpha, target_modules=valid.target_modules,
        weights_path=str(valid.weights_path), sha256=valid.sha256, size_bytes=valid.size_bytes,
    ))


def answer(data: bytes) -> Reply:
    """The reply to one encoded request (what the child does between its limits and its stdout)."""
    try:
        return _inspect(msgspec.json.decode(data, type=_Request))
    except errors.ClientError as error:
        return Refused(type(error).__name__, error.message, error.param, error.code, error.status_code)
    except MemoryError:
        return Exhausted("memory")
    except RecursionError:
        return Exhausted("stack")
    except OSError as error:
        if error.errno == errno.ENOMEM:
            return Exhausted("memory")
        if error.errno == errno.EFBIG:
            return Exhausted("file size")
        traceback.print_exc(limit=8)
        return Crashed(type(error).__name__)
    except Exception as error:  # noqa: BLE001 - a bug: reported as such, its traceback on stderr
        traceback.print_exc(limit=8)
        return Crashed(type(error).__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorafleet.adapters.sandbox")
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    parser.add_argument("--file-bytes", type=int, required=True)
    arguments = parser.parse_args(argv)
    _apply_limits(arguments.memory_bytes, arguments.cpu_seconds, arguments.file_bytes)
    try:
        data = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
        reply = answer(data) if len(data) <= MAX_REQUEST_BYTES else Crashed("request too large")
        encoded = _encoder.encode(reply)
    except MemoryError:
        encoded = _EXHAUSTED_MEMORY
    sys.stdout.buffer.write(encoded)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
