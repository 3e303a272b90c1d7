"""How an alias over weighted versions picks one: by weight, and by sticky key the same for one caller."""

from __future__ import annotations

from collections import Counter

from lorafleet.adapters.aliases import alias_name_problem, choose


def test_a_sticky_key_always_gets_the_same_version_and_keys_spread_by_weight():
    picks = {f"user-{n}": choose([90, 10], f"user-{n}", "ten_x\x00bot@prod") for n in range(4000)}
    assert all(choose([90, 10], key, "ten_x\x00bot@prod") == index for key, index in picks.items())
    share = Counter(picks.values())[1] / len(picks)
    # Binomial(4000, 0.1): sigma = sqrt(4000 * 0.1 * 0.9) / 4000 = 0.0047; 4 sigma either side.
    assert 0.1 - 4 * 0.0047 <= share <= 0.1 + 4 * 0.0047, share


def test_moving_weight_to_the_new_version_moves_callers_one_way_only():
    salt = "ten_x\x00bot@prod"
    keys = [f"user-{n}" for n in range(2000)]
    before = {key: choose([90, 10], key, salt) for key in keys}
    after = {key: choose([50, 50], key, salt) for key in keys}
    assert not [key for key in keys if before[key] == 1 and after[key] == 0], "a v2 caller went back to v1"
    assert [key for key in keys if before[key] == 0 and after[key] == 1], "some v1 callers moved to v2"


def test_another_alias_or_tenant_draws_independently():
    keys = [f"user-{n}" for n in range(2000)]
    one = [choose([50, 50], key, "ten_a\x00bot@prod") for key in keys]
    other = [choose([50, 50], key, "ten_b\x00bot@prod") for key in keys]
    assert one != other


def test_without_a_key_every_version_is_drawn_by_weight():
    drawn = Counter(choose([1, 1, 2], None, "salt") for _ in range(8000))
    # Each share within 4 sigma of its expectation (0.25, 0.25, 0.5; sigma <= 0.0056 at n = 8000).
    for index, expected in enumerate((0.25, 0.25, 0.5)):
        assert abs(drawn[index] / 8000 - expected) <= 4 * 0.0056, drawn


def test_an_alias_may_not_look_like_a_version_or_leave_the_pattern():
    assert alias_name_problem("prod") is None and alias_name_problem("canary-2") is None
    assert "version" in alias_name_problem("v2")
    for bad in ("Prod", "2prod", "", "a" * 33, "pr@d", "p:d"):
        assert alias_name_problem(bad), bad
