"""The jobs on a multi-node Ray: several raylets on this machine (`ray.cluster_utils.Cluster`).

Each scenario runs in a process of its own (tests/cluster/scenarios.py) with a private
RAY_TMPDIR, so its cluster never meets the session's Ray (`ray_local`) or anyone else's.
What one machine cannot show: nodes that differ in disks or network; every folder here is
"shared", and a node with a folder of its own is made with a mount namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = Path(__file__).with_name("scenarios.py")
ROOT = SCENARIOS.parents[2]


@pytest.fixture(scope="module")
def ray_tmpdir() -> Iterator[Path]:
    """Short (Ray's socket paths must fit in 107 bytes) and private to these clusters."""
    path = Path(tempfile.mkdtemp(prefix="bpo-mn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_scenario(name: str, workdir: Path, ray_tmpdir: Path, timeout_s: float = 240) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmpdir), PYTHONPATH=str(ROOT),
               # Ray Train's controller polls its workers every 2 s by default: dominant in a
               # tiny run. The driver passes this on to the controller.
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCENARIOS), name, str(workdir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert "error" not in result, result["error"]
    print(f"{name}: {time.monotonic() - started:.1f} s ({result['scenario_s']} s in the scenario)")
    return result


@pytest.fixture(scope="module")
def spread(tmp_path_factory, ray_tmpdir) -> dict:
    return run_scenario("spread", tmp_path_factory.mktemp("spread"), ray_tmpdir)


def test_construct_actors_on_several_nodes_write_every_row(spread):
    s = spread["summary"]
    assert s["rows_in"] == 42 == s["rows_out"] + s["rows_rejected"] and s["rows_skipped"] == 0
    assert (s["rows_out"], s["rows_rejected"], s["rows_rejected_retryable"]) == (40, 2, 0)
    assert spread["ledger"] == {"pairs": 40, "rejected": 2, "unique_ids": 42, "ids": 42}
    # Every client connection the server saw is placed on a node, and more than one node sent rows.
    assert spread["peers"] >= 2 and spread["peers_placed"] == spread["peers"], spread
    assert len(spread["nodes_served"]) > 1 and set(spread["nodes_served"]) <= set(spread["nodes"]), spread


def test_shared_path_check_passes_where_every_node_sees_the_folder(spread):
    shared = spread["shared"]
    assert shared["markers_left"] == []
    assert shared["probe_sees_marker"] == [True, True]  # the two nodes besides the driver's
    assert shared["probe_sees_missing"] == [False, False]


def test_shared_path_check_names_the_node_that_sees_another_folder(spread):
    negative = spread["shared"]["negative"]
    if "skipped" in negative:
        pytest.skip(negative["skipped"])
    error = negative["error"]
    assert error is not None, "a node with its own empty folder passed the check"
    assert error.startswith("storage_path: ") and "is not shared" in error
    assert negative["node"][:12] in error and "s3://" in error and "gs://" in error
    assert error.count("(node ") == 1  # only the namespaced node; the others see the folder


def test_two_training_workers_spread_over_two_nodes_checkpoint_to_shared_storage(tmp_path, ray_tmpdir):
    result = run_scenario("train", tmp_path, ray_tmpdir)
    summary = result["summary"]
    assert summary["finished"] and summary["placement_strategy"] == "SPREAD" and summary["num_workers"] == 2
    workers = summary["worker_nodes"]
    assert len(workers) == 2 and len(set(workers)) == 2 and set(workers) <= set(result["nodes"]), result
    # Both ranks wrote their ZeRO shard into one checkpoint folder under storage_path.
    assert summary["checkpoint"].startswith(summary["storage_path"]) and result["checkpoints"]
    files = result["last_checkpoint_files"]
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in f for f in files), files
    assert any(f.startswith("hf_model/") for f in files), files
    # output was a file:// URI: the model is at its path, and no folder named 'file:' appeared.
    for name in ("model.safetensors", "config.json", "tokenizer.json", "bpo_template.json", "README.md",
                 "train_config.json", "summary.json"):
        assert name in result["output_files"], name
    assert result["stray_uri_folders"] == []


def test_losing_a_worker_node_mid_construct_loses_no_row(tmp_path, ray_tmpdir):
    result = run_scenario("node-loss", tmp_path, ray_tmpdir)
    removed = result["removed"]
    assert "error" not in removed, removed
    # The node went while it held a stage actor that had been sending rows, mid-run.
    assert removed["node_connections"] > 0 and removed["at_request"] < 58, removed
    assert result["alive_nodes"] == 3  # head + the two workers left
    s = result["summary"]
    assert s["rows_in"] == 60 == s["rows_out"] + s["rows_rejected"] and s["rows_skipped"] == 0
    assert (s["rows_out"], s["rows_rejected"], s["rows_rejected_retryable"]) == (58, 2, 0)
    assert result["ledger"] == {"pairs": 58, "rejected": 2, "unique_ids": 60, "ids": 60}
    # Rows answered on the lost node but not yet handed back were asked again: paid twice,
    # written once.
    assert result["server_requests"] >= 58
    print(f"node removed after {removed['at_request']} requests ({removed['in_flight']} in flight); "
          f"server requests {result['server_requests']} for 58 rows")
