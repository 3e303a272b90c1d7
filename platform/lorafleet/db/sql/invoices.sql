-- name: tenants_to_invoice
-- Tenants (all, or $2) with unbilled usage started before the period's end.
SELECT DISTINCT tenant_id FROM usage_ledger
WHERE invoice_id IS NULL AND started_at < $1 AND ($2::text IS NULL OR tenant_id = $2)
ORDER BY tenant_id;

-- name: lock_tenant_account
SELECT tenant_id FROM tenant_accounts WHERE tenant_id = $1 FOR UPDATE;

-- name: find_invoice_for_period
SELECT id FROM invoices WHERE tenant_id = $1 AND period_start = $2;

-- name: claim_unbilled_rows
-- Every unbilled row of the tenant started before the period's end belongs to this invoice;
-- rows started before the period's start arrived after their own period was closed.
UPDATE usage_ledger SET invoice_id = $2
WHERE tenant_id = $1 AND invoice_id IS NULL AND started_at < $3;

-- name: invoice_usage_groups
-- One group per (late, model, adapter, price version), fine-tuning and batch lines apart from requests
-- (each its own line).
SELECT (l.started_at < $3) AS late, (l.endpoint = 'fine_tuning') AS training, (l.batch_id IS NOT NULL) AS batch,
       l.base_model_id, l.adapter_id, l.price_id,
       count(*)::bigint AS requests, sum(l.prompt_tokens)::bigint AS prompt_tokens,
       sum(l.cached_prompt_tokens)::bigint AS cached_prompt_tokens,
       sum(l.completion_tokens)::bigint AS completion_tokens, sum(l.cost_pico_usd) AS amount_pico,
       m.name AS model, a.name AS adapter, p.prompt_micro_usd_per_mtok, p.completion_micro_usd_per_mtok,
       p.adapter_surcharge_micro_usd_per_mtok, p.cached_prompt_micro_usd_per_mtok, p.training_micro_usd_per_mtok,
       p.batch_discount_bps, min(l.started_at) AS first_started_at
FROM usage_ledger l
JOIN base_models m ON m.id = l.base_model_id
LEFT JOIN adapters a ON a.id = l.adapter_id
LEFT JOIN prices p ON p.id = l.price_id
WHERE l.tenant_id = $1 AND l.invoice_id = $2
GROUP BY late, training, batch, l.base_model_id, l.adapter_id, l.price_id, m.name, a.name,
         p.prompt_micro_usd_per_mtok, p.completion_micro_usd_per_mtok, p.adapter_surcharge_micro_usd_per_mtok,
         p.cached_prompt_micro_usd_per_mtok, p.training_micro_usd_per_mtok, p.batch_discount_bps
ORDER BY late, m.name, training, batch, a.name NULLS FIRST, l.price_id NULLS FIRST;

-- name: credit_available
SELECT (SELECT credit_granted_micro_usd FROM tenant_accounts WHERE tenant_id = $1)
     - coalesce((SELECT sum(credit_applied_micro_usd) FROM invoices WHERE tenant_id = $1), 0) AS available;

-- name: insert_invoice
INSERT INTO invoices (id, tenant_id, period_start, period_end, subtotal_micro_usd, credit_applied_micro_usd,
                      total_micro_usd)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: insert_invoice_lines
INSERT INTO invoice_lines (id, invoice_id, position, kind, description, base_model_id, adapter_id, price_id, requests,
                           prompt_tokens, completion_tokens, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok,
                           adapter_surcharge_micro_usd_per_mtok, amount_micro_usd, amount_pico_usd,
                           cached_prompt_tokens, cached_prompt_micro_usd_per_mtok, batch_discount_bps)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[],
                     $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
                     $16::numeric[], $17::bigint[], $18::bigint[], $19::int[]);

-- name: enqueue_stripe_export
INSERT INTO stripe_outbox (invoice_id) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: list_invoices
SELECT i.id, i.tenant_id, i.period_start, i.period_end, i.subtotal_micro_usd, i.credit_applied_micro_usd,
       i.total_micro_usd, i.created_at, i.stripe_invoice_id, i.stripe_exported_at, o.status AS stripe_status
FROM invoices i LEFT JOIN stripe_outbox o ON o.invoice_id = i.id
WHERE i.tenant_id = $1
  AND ($2::text IS NULL OR (i.period_start, i.id) < (SELECT c.period_start, c.id FROM invoices c WHERE c.id = $2 AND c.tenant_id = $1))
ORDER BY i.period_start DESC, i.id DESC LIMIT $3;

-- name: get_invoice
SELECT i.id, i.tenant_id, i.period_start, i.period_end, i.subtotal_micro_usd, i.credit_applied_micro_usd,
       i.total_micro_usd, i.created_at, i.stripe_invoice_id, i.stripe_exported_at, o.status AS stripe_status
FROM invoices i LEFT JOIN stripe_outbox o ON o.invoice_id = i.id
WHERE i.id = $1 AND ($2::text IS NULL OR i.tenant_id = $2);

-- name: get_invoice_lines
SELECT id, position, kind, description, base_model_id, adapter_id, price_id, requests, prompt_tokens,
       completion_tokens, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok,
       adapter_surcharge_micro_usd_per_mtok, amount_micro_usd, amount_pico_usd, stripe_invoice_item_id,
       cached_prompt_tokens, cached_prompt_micro_usd_per_mtok, batch_discount_bps
FROM invoice_lines WHERE invoice_id = $1 ORDER BY position;

-- name: next_stripe_export
-- One pending invoice, locked so a second exporter running at the same time takes another.
SELECT o.invoice_id, i.tenant_id, t.name AS tenant_name, a.stripe_customer_id, i.stripe_invoice_id,
       i.period_start, i.period_end, i.total_micro_usd
FROM stripe_outbox o JOIN invoices i ON i.id = o.invoice_id JOIN tenants t ON t.id = i.tenant_id
JOIN tenant_accounts a ON a.tenant_id = i.tenant_id
WHERE o.status = 'pending'
ORDER BY i.created_at
LIMIT 1 FOR UPDATE OF o SKIP LOCKED;

-- name: set_stripe_customer
UPDATE tenant_accounts SET stripe_customer_id = $2 WHERE tenant_id = $1;

-- name: set_stripe_invoice_item
UPDATE invoice_lines SET stripe_invoice_item_id = $2 WHERE id = $1;

-- name: set_stripe_invoice
UPDATE invoices SET stripe_invoice_id = $2, stripe_exported_at = now() WHERE id = $1;

-- name: finish_stripe_export
UPDATE stripe_outbox SET status = 'done', attempts = attempts + 1, last_error = NULL, updated_at = now()
WHERE invoice_id = $1;

-- name: fail_stripe_export
UPDATE stripe_outbox SET attempts = attempts + 1, last_error = $2, updated_at = now() WHERE invoice_id = $1;
