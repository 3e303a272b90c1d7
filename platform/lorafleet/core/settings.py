"""Typed settings read from ``LORAFLEET_*`` environment variables, one struct per kind of process.

Each process loads only its own: a worker's :class:`WorkerSettings` has no admin token, metrics
token or Stripe key to read (an environment variable of another role is ignored, never loaded).
What two roles share sits in a base they both extend:

    CommonSettings            every process: data dir, database, logging, currency
    ├── FleetSettings         gateway and worker: the internal token, the blob store
    │   ├── GatewaySettings   `lorafleet gateway`
    │   └── WorkerSettings    `lorafleet worker`
    │       └── TrainerSettings  `lorafleet trainer`: the worker's model settings, and fine-tuning's own
    ├── BillingSettings       `lorafleet billing …` (Stripe)
    └── LauncherSettings      `lorafleet up` (how many workers, its log files)

Every field is documented with ``Meta(description=...)``; the README's settings table, one section
per struct, is checked against this module by a test, so a new setting cannot go undocumented.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

PREFIX = "LORAFLEET_"


_STRUCT = dict(kw_only=True, frozen=True, forbid_unknown_fields=True)


class CommonSettings(msgspec.Struct, **_STRUCT):
    """Every process."""

    data_dir: Annotated[str, Meta(description="Folder for the embedded database, models, blobs, pid files and logs.")] = ".lorafleet"
    database_url: Annotated[str, Meta(description="PostgreSQL DSN. Empty: `lorafleet up` starts an embedded server under the data dir.")] = ""
    currency: Annotated[Literal["usd"], Meta(description="Currency of prices, invoices and Stripe items.")] = "usd"
    log_format: Annotated[Literal["json", "console"], Meta(description="`json` (one object per line) or `console` (pretty, for a terminal).")] = "json"
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Meta(description="Lowest level logged.")] = "info"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


class FleetSettings(CommonSettings, **_STRUCT):
    """The gateway, the worker and the trainer: their shared secret, where adapter weights live, and what
    an adapter and a tenant's adapters may be (uploads at the gateway, fine-tuned results at the trainer)."""

    internal_token: Annotated[str, Meta(description="Shared secret between gateway and workers. Empty: `lorafleet up` generates one into the data dir.")] = ""
    blob_store: Annotated[Literal["local", "s3"], Meta(description="Where adapter weights live: `local` (BLOB_DIR, shared by gateway and workers on one machine) or `s3` (needs the `s3` extra; credentials from the usual AWS variables).")] = "local"
    s3_bucket: Annotated[str, Meta(description="Bucket of the S3 blob store.")] = ""
    s3_prefix: Annotated[str, Meta(description="Key prefix of blobs in the bucket.")] = "blobs/"
    s3_endpoint_url: Annotated[str, Meta(description="S3-compatible endpoint (MinIO, Ceph, R2 …). Empty: AWS.")] = ""
    s3_region: Annotated[str, Meta(description="Region of the bucket. Empty: boto3's default.")] = ""
    blob_dir: Annotated[str, Meta(description="Folder of the local blob store (adapter weights by sha256). Empty: DATA_DIR/blobs.")] = ""
    tenant_max_adapters: Annotated[int, Meta(ge=1, description="Adapters one tenant may keep (409 beyond).")] = 1000
    tenant_max_adapter_bytes: Annotated[int, Meta(ge=1, description="Bytes of adapter weights one tenant may keep (409 beyond).")] = 10 * 1024**3
    max_upload_bytes: Annotated[int, Meta(ge=1024, description="Largest adapter upload, in bytes, enforced while streaming (413 above); also the cap on an archive's decompressed size.")] = 256 * 1024 * 1024
    max_adapter_files: Annotated[int, Meta(ge=2, description="Most files an uploaded adapter archive may hold.")] = 16

    @property
    def resolved_blob_dir(self) -> Path:
        return Path(self.blob_dir).resolve() if self.blob_dir else self.data_path / "blobs"


class GatewaySettings(FleetSettings, **_STRUCT):
    """``lorafleet gateway``: the API, admission, routing, the operator's and the dashboard's tokens."""

    db_pool_size: Annotated[int, Meta(ge=1, description="Connections per gateway process.")] = 10
    gateway_host: Annotated[str, Meta(description="Address the gateway binds to.")] = "127.0.0.1"
    gateway_port: Annotated[int, Meta(ge=1, le=65535, description="Port the gateway binds to.")] = 8400
    admin_token: Annotated[str, Meta(description="Bearer token of the operator admin API. Empty: `lorafleet up` generates one into the data dir.")] = ""
    max_request_bytes: Annotated[int, Meta(ge=1024, description="Largest accepted JSON request body, in bytes (413 above).")] = 4 * 1024 * 1024
    key_cache_seconds: Annotated[float, Meta(ge=0, le=1, description="How long a gateway trusts a cached key lookup; bounds how late a revocation takes effect.")] = 0.5
    placement_strategy: Annotated[Literal["residency", "round_robin", "rendezvous"], Meta(description="How the gateway picks a worker. residency: the placement policy (README › Fleet); round_robin and rendezvous exist for benchmarks/fleet_real.py to compare against.")] = "residency"
    worker_refresh_seconds: Annotated[float, Meta(gt=0, description="How often the gateway re-reads the worker registry and polls each worker.")] = 1.0
    catalog_refresh_seconds: Annotated[float, Meta(gt=0, description="How often the gateway re-reads base models and prices (a new price applies within this).")] = 1.0
    upstream_connect_timeout_seconds: Annotated[float, Meta(gt=0, description="Longest wait to open a connection to a worker; a worker that cannot be reached in time is replaced by the next.")] = 5.0
    upstream_idle_timeout_seconds: Annotated[float, Meta(gt=0, description="Longest silence between two bytes of a streamed answer from a worker (a request still producing tokens is never cut). A non-streamed answer arrives whole at the end, so it waits as long as its worker stays in routing. A timeout after the worker took the request is a 502, never retried.")] = 300.0
    wake_timeout_seconds: Annotated[float, Meta(ge=0, description="How long the gateway holds a request for a base model with no ready worker (asleep, waking, starting, or scaled to zero) before answering 503 with Retry-After; the wait is not billed. 0: answer 503 at once.")] = 120.0
    hold_max_requests: Annotated[int, Meta(ge=0, description="Requests one gateway may hold while no worker of their model is ready (503 `hold_capacity_exhausted` with Retry-After beyond). 0: no cap.")] = 1024
    hold_max_bytes: Annotated[int, Meta(ge=0, description="Bytes of request bodies one gateway may hold while no worker of their model is ready (503 `hold_capacity_exhausted` beyond). 0: no cap.")] = 256 * 1024 * 1024
    tenant_hold_max_requests: Annotated[int, Meta(ge=0, description="Requests one tenant may have held in one gateway while no worker of their model is ready (429 `too_many_held_requests` with Retry-After beyond). 0: no cap.")] = 256
    tenant_hold_max_bytes: Annotated[int, Meta(ge=0, description="Bytes of request bodies one tenant may have held in one gateway (429 `too_many_held_requests` beyond). 0: no cap.")] = 64 * 1024 * 1024
    autoscale_target_concurrency: Annotated[int, Meta(ge=1, description="Requests (running + waiting + held) one worker should carry; /autoscaling's desired replicas = ceil(demand / this).")] = 32
    autoscale_idle_seconds: Annotated[float, Meta(ge=0, description="A base model with no demand for this long has 0 desired replicas on /autoscaling (scale to zero).")] = 300.0
    upstream_attempts: Annotated[int, Meta(ge=1, le=10, description="Tries of a request that no worker took yet: a worker that cannot be reached (connection refused, a stale connection that takes no request body) is replaced by the next in placement order (never billed twice). A request a worker took is never tried again (README › The path of a request).")] = 3
    default_max_output_tokens: Annotated[int, Meta(ge=1, description="Output tokens a chat or Responses request may generate when it sets no max_tokens/max_completion_tokens/max_output_tokens (capped by each model's context; shown as `default_max_tokens` in /v1/models). 1024 at the slowest measured rate (about 4 tokens/s: adapters on a busy CPU worker) is about 256 s, well inside the openai SDK's default 600 s timeout. Completions keep OpenAI's default of 16.")] = 1024
    worker_silence_seconds: Annotated[float, Meta(gt=0, description="A worker none of whose state polls has been answered for this long leaves routing. A poll answered late (an engine busy with the CPU) keeps the worker's last known state; a refused connection or a wrong answer takes it out at once.")] = 30.0
    max_prompts_per_request: Annotated[int, Meta(ge=1, description="Most prompts one /v1/completions request may batch.")] = 128
    max_sequences_per_request: Annotated[int, Meta(ge=1, description="Most sequences (prompts × n) one request may ask for.")] = 128
    tenant_max_concurrent_sequences: Annotated[int, Meta(ge=0, description="Sequences one tenant may have in flight through one gateway, even without billing limits (429 beyond). 0: no cap.")] = 256
    responses_retention_days: Annotated[int, Meta(ge=1, le=3650, description="How long a stored /v1/responses answer (store: true) can be read back and chained from; deleted after.")] = 30
    responses_max_stored_bytes: Annotated[int, Meta(ge=1024, description="Largest stored /v1/responses answer (its input, request settings and output as JSON): a request known to be larger is refused (400 `stored_object_too_large`, send `store: false`), one whose output makes it larger is answered and not stored (`store: false` in the answer).")] = 1024 * 1024
    tenant_max_stored_response_bytes: Annotated[int, Meta(ge=1024, description="Bytes of stored /v1/responses answers one tenant may keep (409 `storage_quota_exceeded` before a storing request runs once full; an answer that would pass it is not stored).")] = 1024**3
    tenant_max_stored_responses: Annotated[int, Meta(ge=1, description="Stored /v1/responses answers one tenant may keep (as for the bytes).")] = 1_000_000
    max_file_bytes: Annotated[int, Meta(ge=1024, description="Largest file uploaded to /v1/files, in bytes, enforced while streaming (413 above).")] = 256 * 1024 * 1024
    tenant_max_files: Annotated[int, Meta(ge=1, description="Files (/v1/files) one tenant may keep (409 `storage_quota_exceeded` beyond).")] = 1000
    tenant_max_file_bytes: Annotated[int, Meta(ge=1024, description="Bytes of files (/v1/files) one tenant may keep (409 `storage_quota_exceeded` beyond).")] = 10 * 1024**3
    max_downloads: Annotated[int, Meta(ge=1, description="File downloads (/v1/files/{id}/content, the dashboard's batch files) one gateway process streams at once (503 `download_capacity_exhausted` with Retry-After beyond).")] = 64
    tenant_max_downloads: Annotated[int, Meta(ge=1, description="File downloads one tenant may have in progress through one gateway process (429 `rate_limit_exceeded` with Retry-After beyond).")] = 4
    download_stall_seconds: Annotated[float, Meta(gt=0, description="A download whose client takes no bytes for this long is cut (the connection is closed, its slot freed).")] = 30.0
    max_uploads: Annotated[int, Meta(ge=1, description="File uploads (/v1/files, the dashboard's) one gateway process receives at once, each a temporary file of up to MAX_FILE_BYTES (503 `upload_capacity_exhausted` with Retry-After beyond).")] = 32
    tenant_max_uploads: Annotated[int, Meta(ge=1, description="File uploads one tenant may have in progress through one gateway process (429 `rate_limit_exceeded` with Retry-After beyond).")] = 4
    upload_stall_seconds: Annotated[float, Meta(gt=0, description="An upload (a file, an adapter) whose client sends nothing for this long is answered 408 `request_timeout` and its partial file deleted.")] = 30.0
    tenant_max_fine_tuning_jobs: Annotated[int, Meta(ge=1, description="Fine-tuning jobs one tenant may have open (validating, queued or running) at once (429 `too_many_fine_tuning_jobs` beyond).")] = 3
    batch_max_lines: Annotated[int, Meta(ge=1, description="Most request lines one /v1/batches input file may hold (the batch fails validation above).")] = 50_000
    batch_max_file_bytes: Annotated[int, Meta(ge=1024, description="Largest /v1/batches input file, in bytes (the batch is refused above).")] = 200 * 1024 * 1024
    batch_completion_window_seconds: Annotated[int, Meta(ge=1, description="How long a batch's `completion_window` (\"24h\") lasts: unfinished lines then end as `batch_expired`. Shorter only for tests.")] = 24 * 3600
    tenant_max_open_batches: Annotated[int, Meta(ge=1, description="Batches one tenant may have not finished (validating, in progress, finalizing, cancelling) at once (429 `too_many_batches` beyond).")] = 100
    batch_min_delay_seconds: Annotated[float, Meta(ge=0, description="A batch's lines are not dispatched before this long after the batch was created (then only while workers have headroom): the batch discount pays for deferral, so a one-line batch is no cheaper way to buy an interactive answer. 0 only for tests.")] = 60.0
    batch_max_answer_bytes: Annotated[int, Meta(ge=16 * 1024, description="Most bytes one batch line's answer may have: a larger answer becomes the line's error `response_too_large` (its tokens ran and are billed). Each line's own bound, from its max_tokens, n, logprobs and echo, is at most this; a batch's worst-case output is held in the tenant's file quota while it runs.")] = 1024 * 1024
    webhook_allow_private: Annotated[bool, Meta(description="Webhook deliveries may go to private, loopback, link-local and other non-public addresses (checked after DNS, at send time). Off: refused, so a tenant's endpoint cannot reach the operator's network. On only for tests or a closed deployment.")] = False
    webhook_timeout_seconds: Annotated[float, Meta(gt=0, le=60, description="How long one webhook delivery may take, connection to the last byte read; longer is a failed attempt.")] = 10.0
    webhook_retry_base_seconds: Annotated[float, Meta(gt=0, description="The first retry's delay; later ones are fixed multiples of it (×60, ×360, ×1440, … ×17280: with the default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h, about three days in all, ten attempts). Shorter only for tests.")] = 5.0
    webhook_poll_seconds: Annotated[float, Meta(gt=0, description="How often a gateway looks for webhook deliveries due (any number of gateways share them through leases).")] = 1.0
    webhook_dispatch: Annotated[bool, Meta(description="This gateway delivers webhooks. Off: it only writes them (another gateway delivers).")] = True
    batch_dispatch: Annotated[bool, Meta(description="This gateway runs a batch dispatcher: it validates batches, runs their lines and writes their results (any number of gateways can; none runs a line twice). Off: it only takes and answers /v1/batches requests.")] = True
    batch_lines_per_worker: Annotated[int, Meta(ge=1, description="Batch lines the dispatchers keep in flight per ready worker of a model while it has headroom.")] = 4
    batch_lines_per_worker_busy: Annotated[int, Meta(ge=0, description="Batch lines per ready worker while interactive requests of the model run through this gateway (or did within the last second): a trickle, since on a CPU every line in an engine step slows it for everyone. 0: batch lines wait for a quiet moment.")] = 1
    batch_max_waiting: Annotated[int, Meta(ge=0, description="A worker with more requests than this waiting in its engine's queue gets no new batch lines (interactive traffic first).")] = 0
    batch_max_kv_cache_usage: Annotated[float, Meta(ge=0, le=1, description="A worker whose KV cache is fuller than this (0..1) gets no new batch lines (vLLM preempts only when blocks run out, so this backpressure is what protects interactive requests).")] = 0.8
    batch_engine_priority: Annotated[int, Meta(ge=1, le=1_000_000, description="vLLM scheduling priority of a batch line (interactive requests have 0; larger runs later).")] = 100
    batch_line_lease_seconds: Annotated[float, Meta(gt=0, description="A running batch line is leased this long, renewed while it runs; a line whose dispatcher died runs again after its lease (billed once: its request id is derived from the batch and the line).")] = 60.0
    spool_dir: Annotated[str, Meta(description="Folder where a gateway keeps ledger rows while the database is unreachable, replayed when it returns. Empty: DATA_DIR/spool.")] = ""
    gateway_heartbeat_seconds: Annotated[float, Meta(gt=0, description="How often a gateway proves it is alive (its budget reservations stay held).")] = 2.0
    gateway_dead_after_seconds: Annotated[float, Meta(gt=0, description="A gateway silent this long is dead: any gateway's sweeper releases its reservations.")] = 15.0
    reservation_max_seconds: Annotated[float, Meta(gt=0, description="A reservation older than this is released whoever holds it (longer than any request may run).")] = 6 * 3600.0
    admission_synchronous_commit: Annotated[bool, Meta(description="Admission waits for its reservation to reach disk before routing. Off (default): about 0.2–0.3 ms less per metered request; only a PostgreSQL crash (not a restart) can forget the last fraction of a second of reservations. README \"Admission and durability\".")] = False
    auth_stale_seconds: Annotated[float, Meta(ge=0, description="While the database is unreachable, a key seen this recently keeps its last known answer.")] = 600.0
    auth_failures_per_minute: Annotated[int, Meta(ge=0, description="Failed sign-ins that cost a lookup (well-formed API keys that do not exist; wrong admin tokens, counted apart) one client address may make per minute, after a burst of as many, before its unknown keys get 429 without a lookup (keys that exist are still served; SECURITY.md); per gateway process. 0: no limit.")] = 60
    forwarded_allow_ips: Annotated[str, Meta(description="Comma-separated addresses or networks (CIDR; `*`: any) of proxies whose X-Forwarded-For/-Proto the gateway trusts for the client address (throttling, logs) and scheme. Behind an ingress: its range (the Kubernetes package sets one).")] = "127.0.0.1"
    gateway_keepalive_seconds: Annotated[float, Meta(gt=0, description="How long the gateway keeps an idle client connection open; longer than any load balancer's idle timeout in front of it (60 s is common), so the balancer closes first.")] = 75.0
    metrics_token: Annotated[str, Meta(description="Bearer token required on /metrics and /autoscaling. Empty: they answer anyone who can reach the gateway (they carry no tenant data).")] = ""

    @property
    def resolved_spool_dir(self) -> Path:
        return Path(self.spool_dir).resolve() if self.spool_dir else self.data_path / "spool"


class WorkerSettings(FleetSettings, **_STRUCT):
    """``lorafleet worker``: one vLLM engine for one base model, and its adapter cache."""

    worker_host: Annotated[str, Meta(description="Address the worker's vLLM server binds to.")] = "127.0.0.1"
    worker_port: Annotated[int, Meta(ge=1, le=65535, description="Port of the worker's vLLM server.")] = 8401
    worker_url: Annotated[str, Meta(description="URL the gateway uses to reach this worker. Empty: http://WORKER_HOST:WORKER_PORT.")] = ""
    model_name: Annotated[str, Meta(description="Public name of the worker's base model (what clients put in `model`).")] = "SmolLM2-135M-Instruct"
    model_path: Annotated[str, Meta(description="Folder of the base model's weights. Empty: DATA_DIR/models/MODEL_NAME, built by `lorafleet models prepare`.")] = ""
    max_model_len: Annotated[int, Meta(ge=16, description="Context length the engine serves.")] = 2048
    max_loras: Annotated[int, Meta(ge=1, description="Adapters resident in GPU slots at once (vLLM --max-loras).")] = 4
    max_cpu_loras: Annotated[int, Meta(ge=1, description="Adapters kept in the engine's CPU LRU (vLLM --max-cpu-loras).")] = 16
    max_lora_rank: Annotated[int, Meta(ge=1, description="Largest adapter rank the workers accept (vLLM --max-lora-rank).")] = 16
    kv_cache_gib: Annotated[int, Meta(ge=1, description="KV cache size on the CPU backend, GiB (VLLM_CPU_KVCACHE_SPACE).")] = 2
    engine_start_timeout_seconds: Annotated[float, Meta(gt=0, description="How long the worker waits for vLLM to become healthy before restarting it.")] = 300.0
    adapter_cache_dir: Annotated[str, Meta(description="Worker's local disk cache of adapter files, one per worker. Empty: DATA_DIR/adapter-cache/WORKER_PORT.")] = ""
    adapter_cache_bytes: Annotated[int, Meta(ge=1, description="Worker's adapter disk cache bound, in bytes; least recently used adapters are unloaded and deleted beyond it.")] = 2 * 1024 * 1024 * 1024
    engine_extra_args: Annotated[str, Meta(description="Extra command-line arguments passed to vLLM's server verbatim (space separated).")] = ""
    worker_task: Annotated[Literal["generate", "embed"], Meta(description="What the worker's base model serves: `generate` (chat, completions, responses; LoRA adapters) or `embed` (/v1/embeddings, vLLM's pooling runner, no adapters). An embedding deployment needs its own MODEL_NAME.")] = "generate"
    tool_call_parser: Annotated[str, Meta(max_length=64, description="vLLM tool-call parser for the base model's call syntax (--tool-call-parser; see README › Tool calling). Empty: `tool_choice: auto` is refused; `required` and a named function still work.")] = "hermes"
    tool_strict_level: Annotated[Literal["auto", "function", "parameter"], Meta(description="How far vLLM constrains tool calls (--tool-strict-level). parameter: arguments always match the tool's JSON schema, as if every tool were `strict: true` (small models need it); auto: only tools marked strict.")] = "parameter"
    chat_template: Annotated[str, Meta(description="Chat template file for the base model. Empty: the model's own, or the bundled ChatML template with a tools section when the model's own is ChatML without one (SmolLM2).")] = ""
    worker_idle_seconds: Annotated[float, Meta(ge=0, description="A worker with no request for this long releases its engine and reports itself asleep; the next request wakes it. 0: never sleeps (on Kubernetes, scaling to zero is the autoscaler's job).")] = 0.0
    worker_sleep_mode: Annotated[Literal["stop", "vllm"], Meta(description="How a worker sleeps: `stop` ends the engine process (any machine; waking is an engine start), `vllm` uses vLLM's sleep mode (GPU: frees weights and KV cache, wakes in about a second; needs --enable-sleep-mode in LORAFLEET_ENGINE_EXTRA_ARGS).")] = "stop"
    worker_drain_seconds: Annotated[float, Meta(ge=0, description="On SIGTERM a worker leaves routing at once and lets requests in flight finish for up to this long before it stops.")] = 30.0

    @property
    def resolved_model_path(self) -> Path:
        return Path(self.model_path).resolve() if self.model_path else self.data_path / "models" / self.model_name

    @property
    def resolved_adapter_cache_dir(self) -> Path:
        if self.adapter_cache_dir:
            return Path(self.adapter_cache_dir).resolve()
        return self.data_path / "adapter-cache" / str(self.worker_port)

    @property
    def resolved_worker_url(self) -> str:
        return self.worker_url or f"http://{self.worker_host}:{self.worker_port}"


class TrainerSettings(WorkerSettings, **_STRUCT):
    """``lorafleet trainer``: fine-tuning jobs of the worker's base model (it reads the same model settings)."""

    fine_tuning_max_example_tokens: Annotated[int, Meta(ge=16, description="Longest training example, in tokens of the base model (its line is refused beyond).")] = 2048
    fine_tuning_max_file_tokens: Annotated[int, Meta(ge=1, description="Most tokens a training file may hold, one epoch.")] = 5_000_000
    trainer_threads: Annotated[int, Meta(ge=0, le=256, description="CPU threads a trainer's training process uses (torch). 0: one per core. On a machine shared with workers, 1 can be several times faster than contending threads.")] = 0
    trainer_heartbeat_seconds: Annotated[float, Meta(gt=0, description="How often a trainer proves it still holds its job (and sees a cancel: training stops within about this long).")] = 1.0
    trainer_stale_seconds: Annotated[float, Meta(gt=0, description="A running job whose trainer has not beaten for this long is taken by another trainer and resumes from its last checkpoint.")] = 30.0
    trainer_max_attempts: Annotated[int, Meta(ge=1, le=100, description="Takes of one job by trainers; a job whose trainer stopped this many times fails with `trainer_attempts_exhausted` (while checking its files, crashed or stopped: `validation_attempts_exhausted`).")] = 3
    trainer_checkpoint_steps: Annotated[int, Meta(ge=0, description="A trainer saves a checkpoint every this many steps (and at the end of every epoch). 0: only at epoch ends.")] = 0
    trainer_poll_seconds: Annotated[float, Meta(gt=0, description="How often an idle trainer looks for a job.")] = 1.0
    trainer_max_memory_bytes: Annotated[int, Meta(ge=256 * 1024**2, description="Memory a trainer's training process may hold (resident, watched by the trainer; its address space is capped at this plus LORAFLEET_TRAINER_ADDRESS_SLACK_BYTES). Past it the process is stopped and the job fails with `training_out_of_memory`; a job whose longest example cannot fit is refused while its files are checked.")] = 6 * 1024**3
    trainer_address_slack_bytes: Annotated[int, Meta(ge=0, description="Address space a training process may map beyond LORAFLEET_TRAINER_MAX_MEMORY_BYTES (libraries and thread stacks map more than they touch); its RLIMIT_AS is the sum.")] = 4 * 1024**3
    trainer_tokens_per_step: Annotated[int, Meta(ge=16, description="Tokens one forward/backward pass holds at most (a batch is split into micro-batches of about this many tokens, gradients accumulated): memory follows this, not the batch size. One example longer than this is its own micro-batch.")] = 2048
    trainer_validation_sample: Annotated[int, Meta(ge=1, description="Examples of the validation file a sampled validation pass runs (at the end of each epoch but the last; the end of the job runs the whole file).")] = 32
    fine_tuning_validation_seconds: Annotated[float, Meta(gt=0, description="Time budget for checking one job's files; a file not checked in time is refused (`validation_timeout`, naming the line reached).")] = 300.0
    tenant_max_checkpoint_bytes: Annotated[int, Meta(ge=1024, description="Bytes of fine-tuning checkpoints (resume state in the blob store) one tenant's open jobs may hold at once; a checkpoint past it fails its job with `checkpoint_quota_exceeded`. Only a job's latest checkpoint is kept.")] = 10 * 1024**3


class BillingSettings(CommonSettings, **_STRUCT):
    """``lorafleet billing …``: closing periods and exporting invoices to Stripe."""

    stripe_api_key: Annotated[str, Meta(description="Stripe secret key. Empty: closed invoices are not exported to Stripe.")] = ""
    stripe_api_base: Annotated[str, Meta(description="Stripe API base URL (tests point it at localstripe). Empty: Stripe's own.")] = ""


class LauncherSettings(CommonSettings, **_STRUCT):
    """``lorafleet up``: the processes it runs on this machine and their log files."""

    workers: Annotated[int, Meta(ge=1, le=16, description="Workers `lorafleet up` runs on this machine (ports WORKER_PORT, WORKER_PORT+1, …).")] = 1
    log_max_bytes: Annotated[int, Meta(ge=4096, description="Largest log file of a process `lorafleet up` starts (DATA_DIR/logs/NAME.log), in bytes; beyond it the file is rotated (NAME.log.1, NAME.log.2 …).")] = 10 * 1024 * 1024
    log_backups: Annotated[int, Meta(ge=0, le=100, description="Rotated log files kept per process beside the current one (NAME.log.1 … NAME.log.N); the oldest is deleted.")] = 5


ROLES: tuple[type[CommonSettings], ...] = (CommonSettings, FleetSettings, GatewaySettings, WorkerSettings,
                                          TrainerSettings, BillingSettings, LauncherSettings)
S = TypeVar("S", bound=CommonSettings)


class SettingsError(ValueError):
    """An environment variable does not parse into its setting."""


def load_settings(kind: type[S], environ: dict[str, str] | None = None) -> S:
    """``kind``'s settings from the environment: only its own fields are read."""
    environ = os.environ if environ is None else environ
    fields = {f.name for f in msgspec.structs.fields(kind)}
    raw = {name: environ[PREFIX + name.upper()] for name in fields if PREFIX + name.upper() in environ}
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        # "... - at `$.gateway_port`" → name the environment variable instead of the JSON path.
        message = str(exc)
        if " - at `$." in message:
            text, _, path = message.partition(" - at `$.")
            message = f"{PREFIX}{path.rstrip('`').upper()}: {text}"
        raise SettingsError(message) from None


@functools.cache
def get_settings(kind: type[S]) -> S:
    return load_settings(kind)


def own_fields(kind: type[CommonSettings]) -> list[msgspec.inspect.Field]:
    """The fields ``kind`` declares itself (not those of the base it extends)."""
    inherited = {f.name for base in kind.__mro__[1:] if isinstance(base, type) and issubclass(base, CommonSettings)
                 for f in msgspec.structs.fields(base)}
    return [field for field in msgspec.inspect.type_info(kind).fields if field.name not in inherited]


def documented_settings() -> list[tuple[str, str, object, str]]:
    """(role, environment variable, default, description) for every setting, for docs and the CLI."""
    rows = []
    for kind in ROLES:
        for field in own_fields(kind):
            schema = getattr(field.type, "extra_json_schema", None) or {}
            rows.append((kind.__name__, PREFIX + field.name.upper(), field.default, schema.get("description", "")))
    return rows


def settings_markdown() -> str:
    """The README's settings tables, one per kind of process (``lorafleet settings --markdown``); a test
    keeps the two equal."""
    sections = []
    for kind in ROLES:
        lines = [f"**{kind.__name__}** — {(kind.__doc__ or '').strip()}", "", "| Variable | Default | Meaning |",
                 "|---|---|---|"]
        for field in own_fields(kind):
            schema = getattr(field.type, "extra_json_schema", None) or {}
            default = field.default
            shown = "(empty)" if default == "" else f"`{str(default).lower() if isinstance(default, bool) else default}`"
            lines.append(f"| `{PREFIX}{field.name.upper()}` | {shown} | {schema.get('description', '')} |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)
