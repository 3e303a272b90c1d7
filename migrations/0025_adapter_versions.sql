-- Adapters as a product (issue 32): a name has immutable versions, and aliases point a name at one
-- version or at weighted versions (a canary), with a history that a rollback reads.

-- A version number is never reused under its name, also after the version was deleted: `name@v2`
-- names one set of weights for ever. Existing adapters are version 1 of their name.
ALTER TABLE adapters ADD COLUMN version integer NOT NULL DEFAULT 1 CHECK (version > 0);
DROP INDEX adapters_live_name;
CREATE UNIQUE INDEX adapters_live_version ON adapters (tenant_id, name, version) WHERE status <> 'deleted';

-- An alias of one of a tenant's adapter names: `name@alias`. targets is a JSON array of
-- {"adapter_id", "version", "weight"}; moving the alias is one UPDATE of this row.
CREATE TABLE adapter_aliases (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    alias       text NOT NULL,
    targets     jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, alias)
);

-- Every move of an alias, in order (what a rollback returns to, and who moved it when).
CREATE TABLE adapter_alias_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    alias       text NOT NULL,
    targets     jsonb,  -- NULL: the alias was deleted
    action      text NOT NULL CHECK (action IN ('set', 'rollback', 'delete')),
    key_id      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX adapter_alias_history_by_alias ON adapter_alias_history (tenant_id, name, alias, id DESC);
