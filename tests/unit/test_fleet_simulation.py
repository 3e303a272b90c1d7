"""benchmarks/fleet_simulation.py on a small fleet: reproducible, calibrated, and the policy's wins."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet_simulation.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("fleet_simulation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def small(sim):
    return sim.Workload(workers=12, adapters=1_500, duration_s=150.0, warmup_s=30.0, load=80.0, seed=1)


def test_the_same_seed_gives_the_same_numbers_and_another_seed_others(sim, small):
    first = sim.simulate(small, "lorafleet")
    assert sim.simulate(small, "lorafleet") == first
    assert sim.simulate(replace(small, seed=8), "lorafleet") != first
    assert first.tokens_per_s > 0 and first.cold_loads_per_s > 0


def test_the_worker_model_reproduces_the_measured_multi_lora_curve(sim):
    one = sim.streams_throughput(4, 1)
    assert one == pytest.approx(163, rel=0.02)
    assert sim.streams_throughput(4, None) / one == pytest.approx(2.25, abs=0.05)
    for adapters, measured_ratio in ((4, 1.08), (16, 0.68), (64, 0.41)):
        assert sim.streams_throughput(4, adapters) / one == pytest.approx(measured_ratio, abs=0.08)
    assert sim.streams_throughput(16, 16) / one == pytest.approx(0.98, abs=0.05)  # enough slots: no drop


def test_the_policy_beats_the_others_on_latency_and_cold_loads(sim, small):
    results = {policy: sim.simulate(small, policy) for policy in sim.POLICIES}
    ours = results.pop("lorafleet")
    for policy, theirs in results.items():
        assert ours.ttft_p95_ms < theirs.ttft_p95_ms, policy
        assert ours.cold_loads_per_s < theirs.cold_loads_per_s, policy
        assert ours.first_sight_loads_per_s == theirs.first_sight_loads_per_s  # the same requests reached both
    for policy in ("round-robin", "least-loaded"):  # they scatter every adapter over the fleet
        assert ours.slot_loads_per_s < results[policy].slot_loads_per_s, policy
        assert ours.cold_loads_per_s < results[policy].cold_loads_per_s / 1.5, policy


def test_the_policy_carries_at_least_one_and_a_half_times_round_robins_load(sim, small):
    loads = [20.0, 40.0, 60.0, 80.0, 100.0]
    ours, _ = sim.capacity(small, "lorafleet", loads, slo_ms=1000)
    theirs, _ = sim.capacity(small, "round-robin", loads, slo_ms=1000)
    assert theirs > 0
    assert ours >= 1.5 * theirs
