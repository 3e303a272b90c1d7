-- Stored responses bounded and walked cheaply (issue 21, item 4).
--
-- 1. A stored response's output lives in its own column, apart from the request document (which can
--    hold megabytes of tool schemas and response-format descriptions no later turn renders): a
--    previous_response_id walk reads only each turn's input items and output.
-- 2. Each row knows its size and its conversation's length so far, so the gateway can bound a
--    chained request (and refuse a too-long chain) from one row before admission, and walk the
--    chain only after admission.
-- 3. What each tenant keeps, per kind (stored responses now, the files API later), in bytes and
--    objects: charged in the transaction that stores an object, given back in the one that deletes it.
ALTER TABLE responses
    ADD COLUMN output       jsonb,
    ADD COLUMN stored_bytes bigint,   -- input + document + output as encoded by the gateway: what the quota counts
    ADD COLUMN turn_bytes   bigint,   -- what a chain walk loads and renders for this turn (its input and output)
    ADD COLUMN chain_turns  integer,  -- turns of the conversation up to and including this one (NULL: unknown)
    ADD COLUMN chain_bytes  bigint;   -- turn_bytes summed over those turns (NULL: unknown)
UPDATE responses SET output = coalesce(document -> 'output', '[]'::jsonb), document = document - 'output',
                     turn_bytes = octet_length(input::text) + octet_length(coalesce(document -> 'output', '[]'::jsonb)::text),
                     stored_bytes = octet_length(input::text) + octet_length(document::text);
ALTER TABLE responses ALTER COLUMN output SET NOT NULL, ALTER COLUMN stored_bytes SET NOT NULL,
                      ALTER COLUMN turn_bytes SET NOT NULL;

CREATE TABLE tenant_storage (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('responses', 'files')),
    bytes       bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    objects     bigint NOT NULL DEFAULT 0 CHECK (objects >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind)
);
INSERT INTO tenant_storage (tenant_id, kind, bytes, objects)
SELECT tenant_id, 'responses', sum(stored_bytes), count(*) FROM responses GROUP BY tenant_id;

-- One request taken from a key's requests-per-minute (the same GCRA state lorafleet_admit keeps),
-- for what costs no tokens and reserves no money: reads of stored responses. Nothing is written
-- when the key is over its rate.
CREATE FUNCTION lorafleet_take_request(p_key_id text)
RETURNS TABLE (verdict text, retry_after_ms bigint,
               requests_limit integer, requests_remaining integer, requests_reset_ms bigint,
               tokens_limit integer, tokens_remaining integer, tokens_reset_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    win    constant double precision := 60.0;  -- seconds
    now_s  double precision := extract(epoch FROM clock_timestamp());
    r_tat  double precision;
    r_new  double precision;
BEGIN
    SELECT k.requests_per_minute INTO requests_limit FROM api_keys k WHERE k.id = p_key_id;
    IF requests_limit IS NULL THEN
        verdict := 'admitted';
        RETURN NEXT; RETURN;
    END IF;
    INSERT INTO rate_limit_state (api_key_id) VALUES (p_key_id) ON CONFLICT DO NOTHING;
    SELECT greatest(extract(epoch FROM s.request_tat), now_s) INTO r_tat
    FROM rate_limit_state s WHERE s.api_key_id = p_key_id FOR UPDATE;
    r_new := r_tat + win / requests_limit;
    IF r_new - win - now_s > 0 THEN
        verdict := 'rate_limited';
        retry_after_ms := ceil((r_new - win - now_s) * 1000);
        requests_remaining := greatest(0, floor((win - (r_tat - now_s)) * requests_limit / win));
        requests_reset_ms := ceil((r_tat - now_s) * 1000);
        RETURN NEXT; RETURN;
    END IF;
    UPDATE rate_limit_state s SET request_tat = to_timestamp(r_new) WHERE s.api_key_id = p_key_id;
    requests_remaining := greatest(0, floor((win - (r_new - now_s)) * requests_limit / win));
    requests_reset_ms := ceil((r_new - now_s) * 1000);
    verdict := 'admitted';
    RETURN NEXT;
END;
$$;
