-- Workers say what they are doing, so gateways route only to ready ones and hold requests for a
-- model whose workers sleep: starting → ready → draining (SIGTERM) | asleep (idle) → waking → ready.
-- A gateway that holds a request for a sleeping model asks for a wake-up (wake_requested_at, and
-- NOTIFY lorafleet_wake); workers NOTIFY lorafleet_workers on every change so gateways re-read at once.
ALTER TABLE workers
    ADD COLUMN state text NOT NULL DEFAULT 'ready'
        CHECK (state IN ('starting', 'ready', 'draining', 'asleep', 'waking')),
    ADD COLUMN wake_requested_at timestamptz;

-- What each gateway holds waiting for a worker, per base model ({"bm_…": 3}), for autoscalers: a
-- request waiting on any gateway counts, whichever gateway an autoscaler asks.
ALTER TABLE gateways ADD COLUMN held jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Operator pins (a paid tier, a latency-critical adapter): a pinned adapter stays in the CPU memory
-- and on the disk of every worker of its base model, never evicted; workers re-pin after a restart.
ALTER TABLE adapters ADD COLUMN pinned boolean NOT NULL DEFAULT false;
