from dataclasses import dataclass

from lorafleet.gateway.placement import choose, rendezvous_rank


@dataclass
class W:
    url: str
    in_flight: int = 0


def test_base_requests_go_to_the_least_busy():
    workers = [W("a", 3), W("b", 1), W("c", 2)]
    assert choose(workers, None).url == "b"


def test_an_adapter_sticks_to_one_worker_and_moves_little_when_the_fleet_changes():
    fleet = [W(f"http://w{i}") for i in range(8)]
    adapters = [f"adp_{i}" for i in range(2000)]
    before = {a: choose(fleet, a).url for a in adapters}
    assert {a: choose(fleet, a).url for a in adapters} == before  # deterministic, unlike hash()
    spread = {url: list(before.values()).count(url) for url in {w.url for w in fleet}}
    assert min(spread.values()) > 2000 / 8 * 0.7, "adapters spread over the fleet"
    grown = fleet + [W("http://w8")]
    after = {a: choose(grown, a).url for a in adapters}
    moved = [a for a in adapters if after[a] != before[a]]
    assert all(after[a] == "http://w8" for a in moved), "only adapters that now rank the new worker first move"
    assert len(moved) < 2000 / 9 * 1.4


def test_a_busy_preferred_worker_spills_to_the_next_in_rank():
    fleet = [W("http://a"), W("http://b"), W("http://c")]
    ranked = rendezvous_rank("adp_x", fleet)
    ranked[0].in_flight = 20
    assert choose(fleet, "adp_x", spill_margin=8).url == ranked[1].url
    ranked[0].in_flight = 5
    assert choose(fleet, "adp_x", spill_margin=8).url == ranked[0].url
