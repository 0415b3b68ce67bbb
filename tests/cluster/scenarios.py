"""Multi-node scenarios on a local Ray cluster: several raylets on this machine
(`ray.cluster_utils.Cluster`), each a node with its own id, resources and worker processes.

One scenario per process, so that the pytest session's own Ray is never touched:

    python tests/cluster/scenarios.py NAME WORKDIR

prints its findings as one line `RESULT {json}` on stdout (Ray's logs stay in its session
folder). The test sets RAY_TMPDIR to a private folder, so the cluster's address is recorded
there and no other process on the machine joins it by accident.

On one machine every folder is seen by every node, so "shared storage" is real here; a node
with a view of its own is made with a mount namespace (`unshare -m`) where the OS allows it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

TESTS_DIR = Path(__file__).resolve().parents[1]
ROOT = TESTS_DIR.parent
for _path in (str(ROOT), str(TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


# --- the cluster ---


def start_cluster(head: dict, workers: list[dict], system_config: dict | None = None):
    """A head and worker nodes on this machine, with this process connected as the driver
    (on the head, as under `ray job submit`)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        **head, "include_dashboard": False, **({"_system_config": system_config} if system_config else {})})
    for args in workers:
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    return cluster


def raylet_pids(cluster) -> dict[int, str]:
    """raylet pid -> its node id: a worker process is a child of its node's raylet."""
    from ray._private import ray_constants

    return {node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: node.node_id
            for node in cluster.list_all_nodes()}


class ConnectionWatcher:
    """Which node each client connection to a server came from: samples this machine's TCP
    connections to `port` and maps each client process to the raylet above it. Clients keep
    their connections open (keep-alive), so sampling every few tenths of a second sees them.
    The server records the same client ports as its peers, which ties requests to nodes."""

    def __init__(self, port: int, cluster, every_s: float = 0.2):
        self.port, self.every_s = port, every_s
        self.raylets = raylet_pids(cluster)
        self.node_of_port: dict[int, str] = {}  # client port -> node id
        self._node_of_pid: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ConnectionWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == self.port and conn.pid:
                node = self._node_of(conn.pid)
                if node is not None:
                    self.node_of_port[conn.laddr.port] = node

    def _node_of(self, pid: int) -> str | None:
        if pid not in self._node_of_pid:
            try:
                chain = psutil.Process(pid).parents()
            except psutil.NoSuchProcess:
                return None
            self._node_of_pid[pid] = next((self.raylets[p.pid] for p in chain if p.pid in self.raylets), None)
        return self._node_of_pid[pid]

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()


# --- construct against the scripted server ---


def reply(body: dict) -> str:
    text = body["messages"][0]["content"].split("[Instruction]\n", 1)[1].split("\n\n[", 1)[0]
    return f"Comparison: fine.\nOptimized Instruction: {text} Please explain step by step."


def feedback_file(path: Path, rows: int, blank: int) -> Path:
    """`rows` usable feedback rows plus `blank` rows with an empty instruction (rejected)."""
    lines = [{"id": f"r{i}", "instruction": f"Explain topic number {i} to a student.",
              "good_res": "A clear answer.", "bad_res": "No."} for i in range(rows)]
    lines += [{"id": f"blank{i}", "instruction": " ", "good_res": "a", "bad_res": "b"} for i in range(blank)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def construct_config(workdir: Path, feedback: Path, server, cluster, **model):
    from bpo_ray.construct.config import ConstructConfig

    return ConstructConfig.model_validate({
        "input": [str(feedback)], "output": str(workdir / "out"), "flush_s": 1.0,
        "ray_address": cluster.address, "num_actors": 2,
        "model": {"provider": "openai", "model": "scripted", "base_url": server.base_url, **model},
    })


def ledger(out: Path) -> dict[str, Any]:
    """What the output folder holds: ids per table, duplicates."""
    from bpo_ray.data.ledger import read_table

    ids = {}
    for name in ("pairs", "rejected"):
        table = read_table(str(out), name, "parquet")
        ids[name] = [] if table is None else table.column("id").to_pylist()
    every = ids["pairs"] + ids["rejected"]
    return {"pairs": len(ids["pairs"]), "rejected": len(ids["rejected"]),
            "unique_ids": len(set(every)), "ids": len(every)}


def accounting(summary: dict) -> dict[str, Any]:
    keys = ("rows_in", "rows_skipped", "rows_out", "rows_rejected", "rows_rejected_retryable", "requests", "retries")
    return {k: summary[k] for k in keys}


# --- scenarios ---


def scenario_spread(workdir: Path) -> dict[str, Any]:
    """Construct's actors on several nodes, then the shared-path check: real positive, and a
    real negative where a node in its own mount namespace sees another folder."""
    import ray

    from bpo_ray.construct.job import run_construct
    from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

    cluster = start_cluster({"num_cpus": 1}, [{"num_cpus": 1}, {"num_cpus": 1}])
    result: dict[str, Any] = {"nodes": [n.node_id for n in cluster.list_all_nodes()]}
    feedback = feedback_file(workdir / "feedback.jsonl", rows=40, blank=2)
    # Each request takes a while, so every actor holds its connections long enough to be seen.
    with ScriptedOpenAIServer(reply_fn=reply, latency_s=0.5) as srv, ConnectionWatcher(srv.port, cluster) as watch:
        summary = run_construct(construct_config(workdir, feedback, srv, cluster, concurrency=4))
        watch.sample()
        peers = {port for _, port in srv.stats.peers}
    served = {node for port, node in watch.node_of_port.items() if port in peers}
    result.update(summary=accounting(summary), ledger=ledger(workdir / "out"), server_requests=srv.stats.requests,
                  nodes_served=sorted(served), peers=len(peers), peers_placed=len(peers & set(watch.node_of_port)))

    result["shared"] = shared_path_checks(workdir / "shared", cluster)
    ray.shutdown()
    cluster.shutdown()
    return result


def shared_path_checks(folder: Path, cluster) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bpo_ray.errors import ConfigError
    from bpo_ray.ray_utils import SHARED_CHECK_PREFIX, check_shared_path, path_seen_here

    out: dict[str, Any] = {}
    started = time.monotonic()
    check_shared_path(str(folder), "storage_path")  # every node here sees this machine's folders
    out["positive_s"] = round(time.monotonic() - started, 2)
    out["markers_left"] = [p.name for p in folder.iterdir() if p.name.startswith(SHARED_CHECK_PREFIX)]

    # The probe on each other node, by hand: a marker the driver wrote is seen, a missing one
    # is not (what a node-local folder looks like from the node without it).
    marker = folder / "by-hand"
    marker.write_text("token")
    here = ray.get_runtime_context().get_node_id()
    probe = ray.remote(num_cpus=0)(path_seen_here)
    others = [n for n in cluster.list_all_nodes() if n.node_id != here]
    on = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)) for n in others]
    out["probe_sees_marker"] = ray.get([p.remote(str(marker), "token") for p in on])
    out["probe_sees_missing"] = ray.get([p.remote(str(folder / "never-written"), "token") for p in on])

    # A node whose view of `folder` differs: its raylet (and so its workers) runs in a mount
    # namespace with an empty tmpfs over the folder, as a node without the NFS mount would be.
    node = start_node_with_private_folder(cluster, folder)
    if isinstance(node, str):
        out["negative"] = {"skipped": node}
        return out
    proc, node_id = node
    try:
        check_shared_path(str(folder), "storage_path")
        out["negative"] = {"node": node_id, "error": None}
    except ConfigError as exc:
        out["negative"] = {"node": node_id, "error": str(exc)}
    finally:
        stop_process_group(proc)
    return out


def start_node_with_private_folder(cluster, folder: Path, timeout_s: float = 60):
    """(process, node id) of a node started with `ray start` in a mount namespace where
    `folder` is an empty tmpfs; or why it cannot be done here (no mount namespaces)."""
    import ray

    if shutil.which("unshare") is None:
        return "no `unshare` command here"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {folder}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no private mount namespace here (unshare -m: {(probe.stderr or 'failed').strip()[:200]})"
    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    ray_bin = Path(sys.executable).with_name("ray")
    command = (f"mount -t tmpfs tmpfs {folder} && exec {ray_bin} start --address={cluster.address} "
               "--num-cpus=0 --block --disable-usage-stats")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", command], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = {n["NodeID"] for n in ray.nodes() if n["Alive"]} - before
        if new:
            return proc, new.pop()
        if proc.poll() is not None:
            return f"`ray start` in a mount namespace exited with {proc.returncode}"
        time.sleep(0.5)
    stop_process_group(proc)
    return "the namespaced node did not join in time"


def stop_process_group(proc: subprocess.Popen) -> None:
    """End a node this scenario started (its own session: `ray start`, raylet and workers)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def scenario_train(workdir: Path) -> dict[str, Any]:
    """Two training workers, SPREAD over two nodes, checkpoints in a folder all nodes see, and
    the model written to a file:// URI."""
    import ray
    from tiny_model import build_tiny_model

    from bpo_ray.train.config import TrainConfig
    from bpo_ray.train.job import run_train

    cluster = start_cluster({"num_cpus": 2}, [{"num_cpus": 2}])
    pairs = [{"id": f"{i}-{k}", "prompt": f"question {i}", "optimized_prompt": f"A clearer question {i}."}
             for k in range(6) for i in range(4)]
    data = workdir / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    storage = workdir / "shared-runs"
    output = workdir / "optimizer"
    cfg = TrainConfig(
        input=[str(data)], output=f"file://{output}", base_model=str(build_tiny_model(workdir / "tiny")),
        num_workers=2, placement_strategy="SPREAD", use_gpu=False, epochs=1, lr=1e-3, max_length=64,
        val_size=2, logging_steps=1, storage_path=str(storage), run_name="spread",
        template={"style": "chat", "instruction": "Rewrite:"}, ray_address=cluster.address,
        deepspeed={"zero_stage": 2, "micro_batch_per_gpu": 4},
    )
    os.chdir(workdir)  # a URI taken for a path would show up here as a folder named 'file:'
    summary = run_train(cfg)
    run_dir = storage / "spread"
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    result = {
        "nodes": [n.node_id for n in cluster.list_all_nodes()],
        "summary": {k: summary.get(k) for k in ("finished", "worker_nodes", "placement_strategy", "num_workers",
                                                  "storage_path", "checkpoint", "step", "total_steps")},
        "checkpoints": [p.name for p in checkpoints],
        "last_checkpoint_files": sorted(str(f.relative_to(checkpoints[-1])) for f in checkpoints[-1].rglob("*")
                                        if f.is_file()) if checkpoints else [],
        "output_files": sorted(p.name for p in output.iterdir()) if output.is_dir() else [],
        "stray_uri_folders": [p.name for p in workdir.iterdir() if p.name.endswith(":")],
    }
    ray.shutdown()
    cluster.shutdown()
    return result


def scenario_node_loss(workdir: Path) -> dict[str, Any]:
    """A worker node that hosts a stage actor is killed mid-run (every process of it, at once,
    as a crashed machine); construct must still write every row once."""
    import ray

    from bpo_ray.construct.job import run_construct
    from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

    # The head runs no work, as on most real clusters: what the lost node held (actors, input
    # blocks) has to come back from elsewhere. Heartbeats every 0.5 s: a dead node is noticed
    # in ~2 s instead of Ray's default ~15 s, which only shortens the test.
    cluster = start_cluster({"num_cpus": 0}, [{"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}],
                            system_config={"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                                           "health_check_failure_threshold": 3})
    rows, kill_after = 60, 15
    feedback = feedback_file(workdir / "feedback.jsonl", rows=rows - 2, blank=2)
    removed: dict[str, Any] = {}

    def kill_a_busy_node(srv, watch) -> None:
        deadline = time.monotonic() + 120
        while srv.stats.requests < kill_after and time.monotonic() < deadline:
            time.sleep(0.05)
        watch.sample()
        busy = set(watch.node_of_port.values())
        victims = [n for n in cluster.worker_nodes if n.node_id in busy]
        if not victims:
            removed["error"] = f"no worker node had a connection to the server after {srv.stats.requests} requests"
            return
        removed.update(node=victims[0].node_id, at_request=srv.stats.requests, in_flight=srv.stats.in_flight(),
                       node_connections=sum(node == victims[0].node_id for node in watch.node_of_port.values()))
        cluster.remove_node(victims[0], allow_graceful=False)

    with ScriptedOpenAIServer(reply_fn=reply, latency_s=0.3) as srv, ConnectionWatcher(srv.port, cluster) as watch:
        killer = threading.Thread(target=kill_a_busy_node, args=(srv, watch), daemon=True)
        killer.start()
        started = time.monotonic()
        summary = run_construct(construct_config(workdir, feedback, srv, cluster, concurrency=4,
                                                 rate_limit={"requests_per_s": 10}))
        killer.join(timeout=5)
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    result = {"summary": accounting(summary), "ledger": ledger(workdir / "out"), "removed": removed,
              "alive_nodes": len(alive), "server_requests": srv.stats.requests,
              "wall_s": round(time.monotonic() - started, 1)}
    ray.shutdown()
    cluster.shutdown()
    return result


SCENARIOS = {"spread": scenario_spread, "train": scenario_train, "node-loss": scenario_node_loss}


def main() -> None:
    name, workdir = sys.argv[1], Path(sys.argv[2])
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = SCENARIOS[name](workdir)
    except Exception:
        result = {"error": traceback.format_exc()}
    result["scenario_s"] = round(time.monotonic() - started, 1)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
