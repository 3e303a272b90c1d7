-- Keys record the key that minted them: a child never outlives or outranks its parent (the API
-- checks scopes ⊆ and expires_at ≤ the parent's at creation). Keys minted with a checksum in the
-- secret (tenancy/keys.py) are marked, so gateways look up unchecksummed ("legacy") secrets only
-- while any legacy key is still active.
ALTER TABLE api_keys
    ADD COLUMN parent_key_id text REFERENCES api_keys (id),
    ADD COLUMN checksummed boolean NOT NULL DEFAULT false;
CREATE INDEX api_keys_active_legacy ON api_keys (id) WHERE NOT checksummed AND revoked_at IS NULL;
