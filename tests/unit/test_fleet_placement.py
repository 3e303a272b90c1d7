import random
from dataclasses import dataclass, field

import pytest
from lorafleet.gateway.fleet.placement import (
    DEFAULT_POLICY,
    PlacementPolicy,
    choose,
    desired_replicas,
    has_room,
    rank,
    rank_with,
    rendezvous_weigher,
)


@dataclass(eq=False)
class W:
    id: str
    max_loras: int = 4
    in_flight: int = 0
    waiting: int = 0
    slots: frozenset[str] = frozenset()
    cpu: frozenset[str] = frozenset()
    disk: frozenset[str] = frozenset()
    active: dict[str, int] = field(default_factory=dict)
    pinned: frozenset[str] = frozenset()


def fleet(size: int, **fields) -> list[W]:
    return [W(f"http://w{i}", **fields) for i in range(size)]


def send(worker: W, adapter: str | None) -> None:
    """What the gateway does once it has routed a request."""
    worker.in_flight += 1
    if adapter is not None:
        worker.active[adapter] = worker.active.get(adapter, 0) + 1


def finish(worker: W, adapter: str | None) -> None:
    worker.in_flight -= 1
    if adapter is not None:
        worker.active[adapter] -= 1
        if not worker.active[adapter]:
            del worker.active[adapter]


def busy_with_others(worker: W, count: int) -> None:
    """``count`` more requests on the worker, each for an adapter of its own."""
    for _ in range(count):
        send(worker, f"adp_other_{worker.id}_{len(worker.active)}")


def test_prefers_a_slot_then_cpu_memory_then_disk_then_the_home_worker():
    workers = fleet(4)
    first_home = max(workers, key=rendezvous_weigher("adp_x"))
    others = [w for w in workers if w is not first_home]
    others[0].disk, others[1].cpu, others[2].slots = frozenset({"adp_x"}), frozenset({"adp_x"}), frozenset({"adp_x"})
    assert choose(workers, "adp_x") is others[2]
    others[2].slots = frozenset()
    assert choose(workers, "adp_x") is others[1]
    others[1].cpu = frozenset()
    assert choose(workers, "adp_x") is others[0]
    others[0].disk = frozenset()
    assert choose(workers, "adp_x") is first_home


def test_a_pinned_adapter_ranks_with_cpu_memory_and_holds_no_slot():
    workers = fleet(3)
    workers[1].pinned = frozenset({"adp_x"})
    workers[2].disk = frozenset({"adp_x"})
    assert choose(workers, "adp_x") is workers[1]
    workers[2].slots = frozenset({"adp_x"})
    assert choose(workers, "adp_x") is workers[2]
    workers[0].pinned = frozenset({f"adp_pin_{i}" for i in range(4)})  # pinned in CPU memory, none in use
    assert has_room(workers[0], "adp_y")


def test_never_a_cold_worker_while_a_warm_one_has_room_within_the_margin():
    workers = fleet(3)
    warm = next(w for w in workers if w is not max(workers, key=rendezvous_weigher("adp_x")))
    warm.disk = frozenset({"adp_x"})
    busy_with_others(warm, 3)  # busier than the idle home worker, one slot still free
    assert choose(workers, "adp_x") is warm
    busy_with_others(warm, 1)  # now its four slots are taken by other adapters
    assert choose(workers, "adp_x") is not warm


def test_a_worker_busier_than_the_fleets_mean_by_more_than_the_margin_is_passed_over():
    workers = fleet(4)
    workers[0].slots = frozenset({"adp_x"})
    workers[0].in_flight = 10  # mean 2.5: within 8 of it
    assert choose(workers, "adp_x", PlacementPolicy(spill_margin=8)) is workers[0]
    workers[0].in_flight = 11  # mean 2.75: 8.25 above
    assert choose(workers, "adp_x", PlacementPolicy(spill_margin=8)) is not workers[0]
    workers[0].in_flight, workers[0].waiting = 6, 5  # held-back requests count twice
    assert choose(workers, "adp_x", PlacementPolicy(spill_margin=8)) is not workers[0]


def test_distinct_adapters_per_worker_stay_within_max_loras_while_the_fleet_has_room():
    workers = fleet(8)
    rng = random.Random(7)
    while sum(len(w.active) for w in workers) < 8 * 4:
        adapter = f"adp_{rng.randrange(60)}"
        send(choose(workers, adapter, PlacementPolicy(spill_margin=1000)), adapter)
        assert all(len(w.active) <= w.max_loras for w in workers)


def test_requests_of_an_adapter_already_running_join_it():
    workers = fleet(6)
    first = choose(workers, "adp_x")
    for _ in range(8):  # below requests_per_replica and within the spill margin: one worker
        send(choose(workers, "adp_x"), "adp_x")
    assert first.active == {"adp_x": 8}
    assert [w for w in workers if w.active] == [first]


def test_a_hot_adapter_replicates_as_its_load_grows_and_shrinks_back_when_it_cools():
    policy = PlacementPolicy(requests_per_replica=8, spill_margin=1000)
    workers = fleet(10)
    placed: list[W] = []
    for _ in range(40):
        worker = choose(workers, "adp_hot", policy)
        send(worker, "adp_hot")
        placed.append(worker)
    replicas = [w for w in workers if "adp_hot" in w.active]
    assert len(replicas) == desired_replicas(39, policy) == 5  # the last request saw 39 in flight
    assert max(w.active["adp_hot"] for w in replicas) - min(w.active["adp_hot"] for w in replicas) <= 8
    for worker in placed[:-4]:  # it cools to 4 in flight: one replica is enough
        finish(worker, "adp_hot")
    for worker in replicas:
        worker.slots = frozenset({"adp_hot"})
    later = [choose(workers, "adp_hot", policy) for _ in range(3)]
    for worker in later:
        send(worker, "adp_hot")
    best_placed = max(replicas, key=rendezvous_weigher("adp_hot"))
    assert all(worker is best_placed for worker in later), "new requests go to one replica; the others drain"


def test_a_cold_adapter_maps_stably_and_a_fleet_change_moves_few():
    workers = fleet(10)
    adapters = [f"adp_{i}" for i in range(2000)]
    before = {a: choose(workers, a).id for a in adapters}
    assert {a: choose(workers, a).id for a in adapters} == before  # deterministic, unlike hash()
    spread = {w.id: list(before.values()).count(w.id) for w in workers}
    assert min(spread.values()) > 2000 / 10 * 0.7
    grown = [*workers, W("http://w10")]
    after = {a: choose(grown, a).id for a in adapters}
    moved = [a for a in adapters if after[a] != before[a]]
    assert all(after[a] == "http://w10" for a in moved), "only adapters that now rank the new worker first move"
    assert len(moved) < 2000 / 11 * 1.4


def test_when_the_home_workers_are_full_it_waits_where_it_is_resident_rather_than_fetch_another_copy():
    workers = fleet(4)
    home = max(workers, key=rendezvous_weigher("adp_x"))
    home.disk = frozenset({"adp_x"})
    busy_with_others(home, 4)
    assert choose(workers, "adp_x") is home
    assert choose(workers, "adp_x", PlacementPolicy(home_workers=4)) is not home  # a wider home set fetches instead


def test_an_adapter_resident_nowhere_goes_to_a_worker_with_room_when_its_home_is_full():
    workers = fleet(4)
    home = max(workers, key=rendezvous_weigher("adp_x"))
    busy_with_others(home, 4)
    for worker in workers:
        if worker is not home:
            busy_with_others(worker, 2)
    chosen = choose(workers, "adp_x")
    assert chosen is not home and has_room(chosen, "adp_x")


def test_base_model_requests_go_to_the_least_busy_preferring_workers_without_adapters():
    workers = fleet(3)
    busy_with_others(workers[0], 1)
    workers[1].in_flight = 4  # base requests only
    send(workers[2], "adp_y")
    send(workers[2], None)
    assert choose(workers, None) is workers[1]
    workers[1].in_flight = 20  # mean 23 / 3: more than 8 above it
    assert choose(workers, None) is workers[0]


def test_rank_starts_with_choose_and_lists_every_worker_once():
    rng = random.Random(3)
    for _ in range(200):
        workers = fleet(rng.randint(1, 12), max_loras=rng.choice([1, 2, 4]))
        for worker in workers:
            for _ in range(rng.randint(0, 12)):
                send(worker, rng.choice([None, *(f"adp_{i}" for i in range(6))]))
            worker.waiting = rng.randint(0, 3)
            worker.disk = frozenset(rng.sample([f"adp_{i}" for i in range(6)], rng.randint(0, 3)))
            worker.cpu = frozenset(rng.sample(sorted(worker.disk), min(len(worker.disk), rng.randint(0, 2))))
        adapter = rng.choice([None, *(f"adp_{i}" for i in range(8))])
        policy = PlacementPolicy(requests_per_replica=rng.choice([1, 4, 16]), spill_margin=rng.choice([0, 2, 8]))
        ranked = rank(workers, adapter, policy)
        assert ranked[0] is choose(workers, adapter, policy)
        assert sorted(map(id, ranked)) == sorted(map(id, workers))


def test_policy_rejects_nonsense_tunables():
    with pytest.raises(ValueError):
        PlacementPolicy(requests_per_replica=0)
    with pytest.raises(ValueError):
        PlacementPolicy(spill_margin=-1)
    with pytest.raises(ValueError):
        PlacementPolicy(home_workers=0)
    assert DEFAULT_POLICY == PlacementPolicy()


def test_the_comparison_strategies_ignore_residency_and_load():
    workers = fleet(3)
    workers[2].slots = frozenset({"a"})
    firsts = [rank_with("round_robin", workers, "a")[0].id for _ in range(6)]
    assert sorted(firsts) == sorted([w.id for w in workers] * 2), "each worker first in turn"
    homes = {rank_with("rendezvous", workers, "a")[0].id for _ in range(5)}
    assert len(homes) == 1 and rank_with("rendezvous", workers, "a") == sorted(
        workers, key=rendezvous_weigher("a"), reverse=True)
    assert rank_with("residency", workers, "a")[0] is workers[2]
