-- Gateways top up their in-memory set of active keys' digests (gateway/key_digests.py) with the
-- keys created since their last read, once a second while an address is throttled: by creation
-- time, without scanning every key.
CREATE INDEX api_keys_by_created_at ON api_keys (created_at);
