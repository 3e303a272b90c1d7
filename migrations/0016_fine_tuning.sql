-- Fine-tuning as a service (issue 23): the files API, fine-tuning jobs queued in PostgreSQL, their
-- events and checkpoints, a training price, and fine-tuned adapters served by their public name.

-- Files a tenant uploads (purpose fine-tune, batch) and the ones our jobs write (fine-tune-results,
-- batch_output). The bytes live in the blob store by sha256; quotas are kept in tenant_storage
-- (kind 'files', migrations/0013).
CREATE TABLE files (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    purpose     text NOT NULL CHECK (purpose IN ('fine-tune', 'batch', 'fine-tune-results', 'batch_output')),
    filename    text NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    -- The blob holding the bytes: sha256(id ':' sha256 of the content), one per file, so deleting a file
    -- never races another file's upload of the same bytes.
    blob_key    text NOT NULL CHECK (blob_key ~ '^[0-9a-f]{64}$'),
    status      text NOT NULL DEFAULT 'processed' CHECK (status IN ('uploaded', 'processed', 'error', 'deleted')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    deleted_at  timestamptz
);
CREATE INDEX files_by_tenant ON files (tenant_id, id) WHERE status <> 'deleted';

-- Jobs. The queue is this table: a trainer takes the oldest job of its base model with
-- FOR UPDATE SKIP LOCKED and keeps heartbeat_at fresh while it trains; a running job whose
-- heartbeat is stale is taken again (attempts + 1) and resumes from its last checkpoint.
CREATE TABLE fine_tuning_jobs (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    api_key_id          text NOT NULL,
    base_model_id       text NOT NULL REFERENCES base_models (id),
    model               text NOT NULL,            -- the base model's public name
    training_file       text NOT NULL,
    validation_file     text,
    suffix              text,
    seed                bigint NOT NULL,
    metadata            jsonb,
    hyperparameters     jsonb NOT NULL,           -- as asked: "auto" or numbers, plus the LoRA extensions
    resolved            jsonb,                    -- "auto" resolved, once the file is validated
    n_examples          integer,
    file_tokens         bigint,                   -- tokens of the training file, one epoch
    status              text NOT NULL CHECK (status IN ('validating_files', 'queued', 'running', 'succeeded',
                                                        'failed', 'cancelled')),
    error               jsonb,                    -- {code, message, param} once failed
    fine_tuned_model    text,
    adapter_id          text,
    trained_tokens      bigint,
    estimated_finish    timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    trainer_id          text,
    heartbeat_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);
CREATE INDEX fine_tuning_jobs_by_tenant ON fine_tuning_jobs (tenant_id, created_at, id);
CREATE INDEX fine_tuning_jobs_open ON fine_tuning_jobs (base_model_id, created_at)
    WHERE status IN ('validating_files', 'queued', 'running');

CREATE TABLE fine_tuning_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    job_id      text NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    level       text NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    type        text NOT NULL CHECK (type IN ('message', 'metrics')),
    message     text NOT NULL,
    data        jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fine_tuning_events_by_job ON fine_tuning_events (job_id, seq);

CREATE TABLE fine_tuning_checkpoints (
    id                          text PRIMARY KEY,
    job_id                      text NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    step_number                 integer NOT NULL,
    metrics                     jsonb NOT NULL,
    fine_tuned_model_checkpoint text NOT NULL,
    sha256                      text NOT NULL,    -- the checkpoint's folder (adapter, optimizer, RNG) as a tar in the blob store
    size_bytes                  bigint NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, step_number)
);

-- A fine-tuned adapter answers to its public name (ft:<base>:<suffix>:<job id>) as well.
ALTER TABLE adapters ADD COLUMN fine_tuned_model text;
CREATE UNIQUE INDEX adapters_live_fine_tuned ON adapters (tenant_id, fine_tuned_model)
    WHERE status <> 'deleted' AND fine_tuned_model IS NOT NULL;

-- Training price per million trained tokens, per price version (0: training is free under it).
ALTER TABLE prices ADD COLUMN training_micro_usd_per_mtok bigint NOT NULL DEFAULT 0
    CHECK (training_micro_usd_per_mtok >= 0);

-- Trained tokens are billed on the ledger as endpoint fine_tuning (prompt_tokens = trained tokens).
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_endpoint_check;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_endpoint_check
    CHECK (endpoint IN ('chat.completions', 'completions', 'responses', 'embeddings', 'fine_tuning'));
