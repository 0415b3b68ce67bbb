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


FIXTURES = TESTS_DIR / "fixtures"
# The public BPO data (thu-coai/BPO, Apache-2.0) is not part of the project: CI puts a copy
# beside the clone; elsewhere BPO_RAY_DATA_DIR names one.
DEFAULT_BPO_DATA = TESTS_DIR.parent.parent / "shared" / "data" / "bpo"


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """The project's own small data files (tests/fixtures), in the public BPO shapes."""
    return FIXTURES


@pytest.fixture(scope="session")
def bpo_data() -> Path:
    """The public BPO data: $BPO_RAY_DATA_DIR, else ../shared/data/bpo, else what `bpo-ray
    fetch-data` cached. Missing data skips the tests that read it, or fails them where
    BPO_RAY_REQUIRE_PUBLIC_DATA=1 (CI)."""
    from bpo_ray.data.public import DATA_DIR_ENV, FILES, cache_dir

    if os.environ.get(DATA_DIR_ENV):
        folder = Path(os.environ[DATA_DIR_ENV]).expanduser()
    elif DEFAULT_BPO_DATA.is_dir() or not all((cache_dir() / f.filename).is_file() for f in FILES.values()):
        folder = DEFAULT_BPO_DATA
    else:
        folder = cache_dir()
    if not folder.is_dir():
        reason = (f"public BPO data not found at {folder}: set {DATA_DIR_ENV} to a copy of thu-coai/BPO's "
                  "data files, or run `bpo-ray fetch-data`")
        if os.environ.get("BPO_RAY_REQUIRE_PUBLIC_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder
