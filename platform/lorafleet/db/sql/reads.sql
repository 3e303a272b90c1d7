-- name: take_read_request
-- One request from key $1's requests-per-minute, for a read that costs no tokens (migrations/0013).
SELECT a.verdict, a.retry_after_ms, a.requests_limit, a.requests_remaining, a.requests_reset_ms,
       a.tokens_limit, a.tokens_remaining, a.tokens_reset_ms
FROM lorafleet_take_request($1) AS a;
