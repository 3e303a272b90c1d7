-- Admission leases (gateway/metering/leases.py): a gateway admitting many concurrent requests of
-- one key reserves a block of them in one round trip — money, request and token rate, exactly as
-- many single admissions would — and admits them from memory; the ledger writer releases the block
-- with its requests' rows (lorafleet_release_leases), returning what was not used.

-- lorafleet_admit learns p_units: one admission of p_units requests (p_amount and p_tokens are
-- their total). Otherwise unchanged from 0003.
DROP FUNCTION lorafleet_admit(text, text, text, text, bigint, bigint);
CREATE FUNCTION lorafleet_admit(
    p_request_id text, p_tenant_id text, p_key_id text, p_gateway_id text,
    p_amount bigint, p_tokens bigint, p_units integer DEFAULT 1)
RETURNS TABLE (verdict text, retry_after_ms bigint,
               requests_limit integer, requests_remaining integer, requests_reset_ms bigint,
               tokens_limit integer, tokens_remaining integer, tokens_reset_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts    timestamptz := clock_timestamp();
    month     date := date_trunc('month', now_ts, 'UTC')::date;
    win       constant double precision := 60.0;  -- seconds
    r_tat     double precision;  -- epoch seconds
    t_tat     double precision;
    r_new     double precision;
    t_new     double precision;
    now_s     double precision := extract(epoch FROM now_ts);
    wait_s    double precision := 0;
    acct      tenant_accounts%ROWTYPE;
    spent     bigint;
BEGIN
    SELECT k.requests_per_minute, k.tokens_per_minute INTO requests_limit, tokens_limit
    FROM api_keys k WHERE k.id = p_key_id;

    IF requests_limit IS NOT NULL OR tokens_limit IS NOT NULL THEN
        INSERT INTO rate_limit_state (api_key_id) VALUES (p_key_id) ON CONFLICT DO NOTHING;
        SELECT greatest(extract(epoch FROM s.request_tat), now_s), greatest(extract(epoch FROM s.token_tat), now_s)
        INTO r_tat, t_tat FROM rate_limit_state s WHERE s.api_key_id = p_key_id FOR UPDATE;
        IF requests_limit IS NOT NULL THEN
            r_new := r_tat + win * p_units / requests_limit;
            wait_s := greatest(wait_s, r_new - win - now_s);
        END IF;
        IF tokens_limit IS NOT NULL THEN
            IF p_tokens > tokens_limit THEN
                verdict := 'too_many_tokens';
                RETURN NEXT; RETURN;
            END IF;
            t_new := t_tat + win * p_tokens / tokens_limit;
            wait_s := greatest(wait_s, t_new - win - now_s);
        END IF;
        IF wait_s > 0 THEN
            verdict := 'rate_limited';
            retry_after_ms := ceil(wait_s * 1000);
            IF requests_limit IS NOT NULL THEN
                requests_remaining := greatest(0, floor((win - (r_tat - now_s)) * requests_limit / win));
                requests_reset_ms := ceil((r_tat - now_s) * 1000);
            END IF;
            IF tokens_limit IS NOT NULL THEN
                tokens_remaining := greatest(0, floor((win - (t_tat - now_s)) * tokens_limit / win));
                tokens_reset_ms := ceil((t_tat - now_s) * 1000);
            END IF;
            RETURN NEXT; RETURN;
        END IF;
    END IF;

    SELECT * INTO acct FROM tenant_accounts a WHERE a.tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        verdict := 'no_account';
        RETURN NEXT; RETURN;
    END IF;
    spent := CASE WHEN acct.period_start = month THEN acct.period_spent_micro_usd ELSE 0 END;
    IF acct.max_concurrent_requests IS NOT NULL AND acct.in_flight >= acct.max_concurrent_requests THEN
        verdict := 'too_many_concurrent';
        retry_after_ms := 1000;
        RETURN NEXT; RETURN;
    END IF;
    IF acct.monthly_spend_limit_micro_usd IS NOT NULL
       AND spent + acct.reserved_micro_usd + p_amount > acct.monthly_spend_limit_micro_usd THEN
        verdict := 'spend_limit';
        RETURN NEXT; RETURN;
    END IF;
    IF acct.billing_mode = 'prepaid'
       AND acct.credit_granted_micro_usd - acct.spent_total_micro_usd - acct.reserved_micro_usd < p_amount THEN
        verdict := 'insufficient_credit';
        RETURN NEXT; RETURN;
    END IF;

    UPDATE tenant_accounts a
    SET reserved_micro_usd = a.reserved_micro_usd + p_amount, in_flight = a.in_flight + 1,
        period_spent_micro_usd = spent, period_start = month, updated_at = now_ts
    WHERE a.tenant_id = p_tenant_id;
    INSERT INTO reservations (request_id, tenant_id, gateway_id, amount_micro_usd)
    VALUES (p_request_id, p_tenant_id, p_gateway_id, p_amount);

    IF requests_limit IS NOT NULL OR tokens_limit IS NOT NULL THEN
        UPDATE rate_limit_state s
        SET request_tat = CASE WHEN r_new IS NULL THEN s.request_tat ELSE to_timestamp(r_new) END,
            token_tat = CASE WHEN t_new IS NULL THEN s.token_tat ELSE to_timestamp(t_new) END
        WHERE s.api_key_id = p_key_id;
        IF requests_limit IS NOT NULL THEN
            requests_remaining := greatest(0, floor((win - (r_new - now_s)) * requests_limit / win));
            requests_reset_ms := ceil((r_new - now_s) * 1000);
        END IF;
        IF tokens_limit IS NOT NULL THEN
            tokens_remaining := greatest(0, floor((win - (t_new - now_s)) * tokens_limit / win));
            tokens_reset_ms := ceil((t_new - now_s) * 1000);
        END IF;
    END IF;
    verdict := 'admitted';
    RETURN NEXT;
END;
$$;

-- A lease of up to p_max_units requests of about this one's worst case (p_amount, p_tokens), sized
-- to at most 1/p_share of every headroom the key and tenant have left (requests and tokens this
-- minute, spend limit, credits), so leases never take a visible share of a limit; tenants with a
-- concurrency cap are never leased. Fewer than two units: this request alone is admitted exactly
-- as lorafleet_admit would (units = 1, reserved under p_request_id). Rows are locked in
-- lorafleet_admit's order (rate state, then account).
CREATE FUNCTION lorafleet_lease(
    p_lease_id text, p_request_id text, p_tenant_id text, p_key_id text, p_gateway_id text,
    p_amount bigint, p_tokens bigint, p_max_units integer, p_share integer)
RETURNS TABLE (units integer, verdict text, retry_after_ms bigint,
               requests_limit integer, requests_remaining integer, requests_reset_ms bigint,
               tokens_limit integer, tokens_remaining integer, tokens_reset_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_s     double precision := extract(epoch FROM clock_timestamp());
    month     date := date_trunc('month', clock_timestamp(), 'UTC')::date;
    win       constant double precision := 60.0;
    n         bigint := p_max_units;
    rpm       integer;
    tpm       integer;
    r_tat     double precision;
    t_tat     double precision;
    acct      tenant_accounts%ROWTYPE;
    spent     bigint;
BEGIN
    SELECT k.requests_per_minute, k.tokens_per_minute INTO rpm, tpm FROM api_keys k WHERE k.id = p_key_id;
    IF rpm IS NOT NULL OR tpm IS NOT NULL THEN
        INSERT INTO rate_limit_state (api_key_id) VALUES (p_key_id) ON CONFLICT DO NOTHING;
        SELECT greatest(extract(epoch FROM s.request_tat), now_s), greatest(extract(epoch FROM s.token_tat), now_s)
        INTO r_tat, t_tat FROM rate_limit_state s WHERE s.api_key_id = p_key_id FOR UPDATE;
        IF rpm IS NOT NULL THEN
            n := least(n, floor((win - (r_tat - now_s)) * rpm / win / p_share));
        END IF;
        IF tpm IS NOT NULL THEN
            n := least(n, floor((win - (t_tat - now_s)) * tpm / win / p_share / greatest(p_tokens, 1)));
        END IF;
    END IF;
    SELECT * INTO acct FROM tenant_accounts a WHERE a.tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND OR acct.max_concurrent_requests IS NOT NULL THEN
        n := 0;
    ELSE
        spent := CASE WHEN acct.period_start = month THEN acct.period_spent_micro_usd ELSE 0 END;
        IF acct.monthly_spend_limit_micro_usd IS NOT NULL THEN
            n := least(n, (acct.monthly_spend_limit_micro_usd - spent - acct.reserved_micro_usd)
                          / p_share / greatest(p_amount, 1));
        END IF;
        IF acct.billing_mode = 'prepaid' THEN
            n := least(n, (acct.credit_granted_micro_usd - acct.spent_total_micro_usd - acct.reserved_micro_usd)
                          / p_share / greatest(p_amount, 1));
        END IF;
    END IF;
    IF n >= 2 THEN
        RETURN QUERY SELECT n::integer, a.* FROM lorafleet_admit(p_lease_id, p_tenant_id, p_key_id, p_gateway_id,
                                                               p_amount * n, p_tokens * n, n::integer) AS a
                     WHERE a.verdict = 'admitted';
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT 1, a.* FROM lorafleet_admit(p_request_id, p_tenant_id, p_key_id, p_gateway_id,
                                                    p_amount, p_tokens) AS a;
END;
$$;

-- Release leases whose requests are all over and recorded (called by the ledger writer in the
-- transaction that inserts those rows): the reservation goes, and the requests and tokens the
-- lease did not use go back to the key's rate (never before now). A lease already swept (its
-- gateway was thought dead) releases nothing and returns nothing, so a replay changes nothing.
-- Rate rows are locked first, in key order, then accounts: lorafleet_admit's order.
CREATE FUNCTION lorafleet_release_leases(p_lease_ids text[], p_key_ids text[], p_unused_requests integer[],
                                         p_unused_tokens bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    lease     record;
    freed     record;
    released  integer := 0;
BEGIN
    PERFORM 1 FROM rate_limit_state s WHERE s.api_key_id = ANY (p_key_ids) ORDER BY s.api_key_id FOR UPDATE;
    FOR lease IN
        SELECT * FROM unnest(p_lease_ids, p_key_ids, p_unused_requests, p_unused_tokens)
                 AS t(lease_id, key_id, unused_requests, unused_tokens)
        ORDER BY key_id, lease_id
    LOOP
        DELETE FROM reservations r WHERE r.request_id = lease.lease_id
        RETURNING r.tenant_id, r.amount_micro_usd INTO freed;
        CONTINUE WHEN NOT FOUND;
        UPDATE rate_limit_state s
        SET request_tat = CASE WHEN k.requests_per_minute IS NULL OR lease.unused_requests = 0 THEN s.request_tat
                          ELSE greatest(now(), s.request_tat
                                        - make_interval(secs => 60.0 * lease.unused_requests / k.requests_per_minute)) END,
            token_tat = CASE WHEN k.tokens_per_minute IS NULL OR lease.unused_tokens = 0 THEN s.token_tat
                        ELSE greatest(now(), s.token_tat
                                      - make_interval(secs => 60.0 * lease.unused_tokens / k.tokens_per_minute)) END
        FROM api_keys k WHERE k.id = lease.key_id AND s.api_key_id = lease.key_id;
        UPDATE tenant_accounts a
        SET reserved_micro_usd = a.reserved_micro_usd - freed.amount_micro_usd, in_flight = a.in_flight - 1,
            updated_at = now()
        WHERE a.tenant_id = freed.tenant_id;
        released := released + 1;
    END LOOP;
    RETURN released;
END;
$$;
