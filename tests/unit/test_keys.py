from lorafleet.tenancy.keys import display_prefix, generate_secret, hash_secret, parse_secret


def test_secret_format_and_entropy():
    secret = generate_secret()
    assert secret.startswith("sk_live_")
    assert parse_secret(secret) == "live"
    assert parse_secret(generate_secret("test")) == "test"
    # 43 base62 characters ≈ 256 bits; two draws never collide in practice.
    assert len({generate_secret() for _ in range(1000)}) == 1000


def test_malformed_secrets_are_rejected():
    good = generate_secret()
    for bad in ("", "sk_live_", good[:-1], good + "x", good.replace("sk_live_", "sk_prod_"), good[:-1] + "!", "Bearer " + good):
        assert parse_secret(bad) is None, bad


def test_hash_and_prefix_do_not_reveal_the_secret():
    secret = generate_secret()
    assert len(hash_secret(secret)) == 32
    assert hash_secret(secret) == hash_secret(secret)
    prefix = display_prefix(secret)
    assert secret.startswith(prefix.rstrip("…"))
    assert len(prefix.rstrip("…")) <= len("sk_live_") + 4
