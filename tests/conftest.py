"""Fixtures shared by all tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# Let a plain checkout run the tests (no `pip install -e .`), and let conftest import helpers
# from tests/ in any pytest import mode.
for _path in (str(TESTS_DIR.parent), str(TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tiny_model import build_tiny_model  # noqa: E402

# No machine here reaches the model hub: fail at once instead of waiting on the network.
# Set at import, not only in a fixture, because huggingface_hub reads them when imported
# (which test modules do while being collected) and Ray workers inherit them from here.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session", autouse=True)
def offline_env() -> Iterator[None]:
    """Keep the offline settings for the whole session, whatever a test does to os.environ."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in OFFLINE_ENV.items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + byte-level ChatML tokenizer, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the session, with a fixed CPU count (CI has 2 cores; stage actors
    ask for fractions of a CPU, local-model actors for one)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": OFFLINE_ENV})
    yield
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


BPO_DATA = TESTS_DIR.parent.parent / "shared" / "data" / "bpo"


@pytest.fixture(scope="session")
def bpo_data() -> Path:
    """The public BPO data that sits beside the project (../shared/data/bpo)."""
    if not BPO_DATA.is_dir():
        raise RuntimeError(f"{BPO_DATA} is missing: the tests read the public BPO data from there")
    return BPO_DATA
