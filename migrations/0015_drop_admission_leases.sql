-- Admission leases leave the tree (docs/architecture.md, "When one PostgreSQL's admission is the
-- limit", keeps what they taught): their functions go, and lorafleet_admit is back to admitting one
-- request (its 0003 signature). Reservations a lease made, if any were left, are swept like any other.
DROP FUNCTION IF EXISTS lorafleet_release_leases(text[], text[], integer[], bigint[]);
DROP FUNCTION IF EXISTS lorafleet_lease(text, text, text, text, text, bigint, bigint, integer, integer);
DROP FUNCTION lorafleet_admit(text, text, text, text, bigint, bigint, integer);
CREATE FUNCTION lorafleet_admit(
    p_request_id text, p_tenant_id text, p_key_id text, p_gateway_id text,
    p_amount bigint, p_tokens bigint)
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
            r_new := r_tat + win / requests_limit;
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
