"""The runner says why a job waits when the cluster cannot hold its actors right now."""

from __future__ import annotations

import re
from pathlib import Path

from bpo_ray.evaluate.config import EvaluateConfig
from bpo_ray.evaluate.live import live_answers_plan
from bpo_ray.runner import resources_short


def test_a_pool_the_cluster_cannot_hold_now_is_said(ray_local: None, tmp_path: Path) -> None:
    base = {"input": [str(tmp_path / "t.jsonl")], "output": str(tmp_path / "out"),
            "endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    assert resources_short(live_answers_plan(EvaluateConfig(**base))) is None  # a quarter CPU fits
    short = resources_short(live_answers_plan(EvaluateConfig(**base, cpus_per_actor=64)))
    assert re.search(r"one actor each for m@\S+ needs 64 CPU \([\d.]+ of 4 free\); more than the cluster has", short), short
    assert "GPU" not in short and "cpus_per_actor" in short
    # Fits the cluster but not what is free now: an actor holds all but half a CPU.
    import ray

    @ray.remote
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.options(num_cpus=ray.available_resources()["CPU"] - 0.5).remote()
    try:
        ray.get(holder.ready.remote())
        held = resources_short(live_answers_plan(EvaluateConfig(**base, cpus_per_actor=1)))
        assert re.search(r"needs 1 CPU \(0.5 of 4 free\); other work .* holds the rest", held), held
    finally:
        ray.kill(holder)
