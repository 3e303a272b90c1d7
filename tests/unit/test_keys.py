import datetime as dt
import zlib

import pytest
from lorafleet.core.errors import InvalidRequest, PermissionDenied
from lorafleet.tenancy.keys import (
    ALL_SCOPES,
    checksum,
    display_prefix,
    generate_secret,
    has_valid_checksum,
    hash_secret,
    parse_secret,
)
from lorafleet.tenancy.service import ApiKeyView, KeyAuthority


def test_secret_format_and_entropy():
    secret = generate_secret()
    assert secret.startswith("sk_live_")
    assert parse_secret(secret) == "live"
    assert parse_secret(generate_secret("test")) == "test"
    # 37 random base62 characters ≈ 220 bits; two draws never collide in practice.
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


def test_the_checksum_is_the_documented_crc32_in_base62():
    secret = generate_secret()
    body, tail = secret[:-6], secret[-6:]
    value, digits = zlib.crc32(body.encode()), ""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = alphabet[digit] + digits
    assert tail == digits == checksum(body)
    assert has_valid_checksum(secret)


def test_any_single_character_change_breaks_the_checksum():
    secret = generate_secret()
    for index in range(len("sk_live_"), len(secret)):
        changed = secret[:index] + ("a" if secret[index] != "a" else "b") + secret[index + 1:]
        assert not has_valid_checksum(changed), index
    assert not has_valid_checksum(secret.replace("sk_live_", "sk_test_")), "the mode is covered too"


NOW = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)


def _view(scopes):
    return ApiKeyView(id="key_x", tenant_id="ten_x", name="", display_prefix="sk_live_abcd…", mode="live",
                      scopes=list(scopes), created_at=NOW, expires_at=None, revoked_at=None)


def test_a_child_key_inherits_its_parents_expiry_and_never_outlives_it():
    parent = KeyAuthority("key_p", frozenset(ALL_SCOPES), NOW + dt.timedelta(hours=1))
    assert parent.grant_expiry(None) == NOW + dt.timedelta(hours=1)
    assert parent.grant_expiry(NOW + dt.timedelta(minutes=5)) == NOW + dt.timedelta(minutes=5)
    with pytest.raises(InvalidRequest) as later:
        parent.grant_expiry(NOW + dt.timedelta(hours=2))
    assert later.value.param == "expires_at"
    assert KeyAuthority("key_p", frozenset(ALL_SCOPES), None).grant_expiry(None) is None


def test_a_child_key_gets_at_most_its_parents_scopes():
    parent = KeyAuthority("key_p", frozenset({"dashboard", "keys:read", "keys:write"}), None)
    assert parent.grant_scopes(None) == ["keys:read", "keys:write", "dashboard"], "none asked: the parent's, not all"
    assert parent.grant_scopes(["keys:read"]) == ["keys:read"]
    with pytest.raises(InvalidRequest) as wider:
        parent.grant_scopes(["inference"])
    assert wider.value.param == "scopes"


def test_a_key_cannot_revoke_a_key_with_scopes_it_does_not_hold():
    narrow = KeyAuthority("key_n", frozenset({"keys:write"}), None)
    with pytest.raises(PermissionDenied):
        narrow.may_revoke(_view(ALL_SCOPES))
    narrow.may_revoke(_view({"keys:write"}))
