"""`make up`'s demo price (issue 30, part 8): fine-tuning is priced too, so a demo job shows what it costs."""

from __future__ import annotations

from lorafleet.cli.up import DEMO_PRICE


def test_the_demo_price_includes_a_training_price():
    assert DEMO_PRICE["training"] > 0 and set(DEMO_PRICE) == {"prompt", "completion", "adapter_surcharge", "training"}
