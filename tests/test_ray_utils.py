"""ensure_ray against a cluster that is gone: an explicit address fails in seconds with a clear
message, a recorded one (a head killed without `ray stop`) is skipped for a fresh local Ray."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpo_ray.errors import ConfigError
from bpo_ray.ray_utils import address_to_join, gcs_answers, recorded_address, tcp_target
from ports import free_port  # tests/ is on sys.path (conftest)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def listening() -> Iterator[str]:
    """A loopback address where something accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def dead() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def no_ray_address(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def record(temp_dir: Path, address: str) -> Path:
    """Write the bootstrap file the way `ray start` does (ray._private.utils.write_ray_address)."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    (temp_dir / "ray_current_cluster").write_text(address)
    return temp_dir


def test_probe_tells_dead_from_listening(dead, listening):
    start = time.monotonic()
    assert not gcs_answers(dead)
    assert not gcs_answers(f"ray://{dead}")
    assert time.monotonic() - start < 3
    assert gcs_answers(listening)
    assert gcs_answers(f"ray://{listening}")
    assert gcs_answers(listening.replace("127.0.0.1", "localhost"))


def test_address_forms():
    assert tcp_target("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert tcp_target("[::1]:6379") == ("::1", 6379)
    assert tcp_target("ray://head:10001") == ("head", 10001)
    assert tcp_target("head") is None and tcp_target("head:port") is None
    assert not gcs_answers("head")


def test_explicit_dead_address_is_a_config_error(dead, no_ray_address):
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        address_to_join(dead)
    assert dead in str(err.value) and "--ray-address" in str(err.value)
    assert "ray stop" in str(err.value) and "unset" in str(err.value)
    assert time.monotonic() - start < 3
    with pytest.raises(ConfigError, match="ray://"):
        address_to_join(f"ray://{dead}")
    with pytest.raises(ConfigError, match="not host:port"):
        address_to_join("nowhere")


def test_dead_ray_address_env_is_named(dead, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(ConfigError, match=f"{dead} from RAY_ADDRESS"):
        address_to_join(None)


def test_live_addresses_pass_unchanged(listening, tmp_path, no_ray_address, monkeypatch):
    assert address_to_join(listening) == listening
    assert address_to_join("local") == "local"
    monkeypatch.setenv("RAY_ADDRESS", listening)
    assert address_to_join(None) == listening
    monkeypatch.delenv("RAY_ADDRESS")
    # A recorded cluster that answers is joined as before ("auto" resolves it as ray.init()
    # with no address does); nothing recorded: a local cluster, as before.
    assert address_to_join(None, temp_dir=str(record(tmp_path, listening))) == "auto"
    assert address_to_join(None, temp_dir=str(tmp_path / "empty")) == "local"


def test_recorded_dead_address_starts_local_with_a_warning(dead, tmp_path, no_ray_address, caplog):
    temp_dir = str(record(tmp_path, dead))
    assert recorded_address(temp_dir) == dead
    with caplog.at_level(logging.WARNING, logger="bpo_ray.ray_utils"):
        assert address_to_join(None, temp_dir=temp_dir) == "local"
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert dead in line and "does not answer" in line and "fresh local Ray" in line and "`ray stop`" in line


def test_recorded_lookup_follows_ray_tmpdir(dead, tmp_path, monkeypatch):
    """The default lookup is Ray's own: $RAY_TMPDIR/ray/ray_current_cluster."""
    record(tmp_path / "ray", dead)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert recorded_address() == dead


def _run(code: str, env: dict[str, str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """A private Ray temp root (short: Ray's socket paths must fit in 107 bytes), so the child's
    Ray never reads or writes this machine's /tmp/ray."""
    path = Path(tempfile.mkdtemp(prefix="bpo-ray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _child_env(ray_tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_TMPDIR": str(ray_tmpdir), "PYTHONPATH": str(ROOT)}


ENSURE = """
import logging, time, ray
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from bpo_ray.ray_utils import ensure_ray
start = time.monotonic()
ensure_ray({address!r}, num_cpus=1)
print("UP", ray.cluster_resources().get("CPU"), round(time.monotonic() - start, 1), flush=True)
ray.shutdown()
"""


def test_ensure_ray_skips_a_dead_recorded_cluster(dead, ray_tmpdir):
    """The user's report: a head killed without `ray stop` left its address recorded, and every
    command hung on GCS retries. Now a fresh local Ray starts in seconds."""
    record(ray_tmpdir / "ray", dead)
    proc, took = _run(ENSURE.format(address=None), _child_env(ray_tmpdir))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "UP 1.0" in proc.stdout, out  # its own cluster, with the CPUs asked for
    assert f"The Ray cluster recorded at {dead} does not answer" in proc.stderr, out
    assert "Failed to connect to GCS" not in out
    assert took < 60, out
    assert (ray_tmpdir / "ray" / "ray_current_cluster").read_text() == dead  # the record is the user's


EXPLICIT = """
from bpo_ray.errors import ConfigError
from bpo_ray.ray_utils import ensure_ray
try:
    ensure_ray({address!r})
except ConfigError as exc:
    print("CONFIG", exc)
    raise SystemExit(3)
"""


def test_ensure_ray_fails_fast_on_a_dead_explicit_address(dead, ray_tmpdir):
    proc, took = _run(EXPLICIT.format(address=dead), _child_env(ray_tmpdir), timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"CONFIG The Ray cluster at {dead} from --ray-address" in proc.stdout
    assert took < 20  # importing ray included; the probe itself takes under 3 s
    assert not (ray_tmpdir / "ray").exists()  # no Ray was started or joined


# --- check_shared_path: the multi-node cases run in tests/cluster/test_multinode.py ---


def test_shared_path_check_leaves_uris_alone(tmp_path, monkeypatch):
    """A bucket URI is shared by nature: no Ray call, no marker (no Ray runs in this test)."""
    import ray

    from bpo_ray.ray_utils import check_shared_path

    monkeypatch.setattr(ray, "nodes", lambda: pytest.fail("a URI must not be checked"))
    check_shared_path("s3://bucket/runs", "storage_path")
    check_shared_path("gs://bucket/runs", "storage_path")


def test_shared_path_check_on_one_node_writes_nothing(tmp_path, ray_local):
    from bpo_ray.ray_utils import check_shared_path

    target = tmp_path / "runs"
    check_shared_path(str(target), "storage_path")
    check_shared_path(f"file://{target}", "storage_path")
    assert not target.exists()  # one node sees its own disk: nothing to find out
