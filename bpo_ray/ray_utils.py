"""Ray session helpers shared by every job: start or join a cluster, surface user errors."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

from bpo_ray.errors import BpoRayError, ConfigError

log = logging.getLogger(__name__)
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
T = TypeVar("T")

# How long a GCS gets to accept a TCP connection. A live one answers in milliseconds, even
# across a data centre; for a dead one ray.init() would retry for minutes.
PROBE_TIMEOUT_S = 2.0

FROM_ARGUMENT = "--ray-address (ray_address in the config)"
FROM_ENV = "RAY_ADDRESS"


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster given by `address` or RAY_ADDRESS (as under `ray job submit`), else
    the one `ray start` recorded on this machine; otherwise start a local one. A no-op when
    Ray is already up in this process.

    The cluster to join is probed first (see `address_to_join`), so a dead one costs seconds,
    not minutes of Ray's GCS retries.
    """
    import ray

    if ray.is_initialized():
        quiet_ray_data()  # a notebook's or a benchmark's own Ray: the job's terminal all the same
        return
    # Ray's INFO lines and its workers' output (Serve access logs, Train reports) stay in the
    # session's log folder (`ray logs`, the dashboard); the job prints its own progress, and a
    # worker's failure still reaches the driver as the exception it raised.
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING}
    join = address_to_join(address)
    if join == "local":
        # Token auth is Ray 2.60's secure default for a new local cluster, and Ray says so in a
        # warning on every start while RAY_AUTH_MODE is unset: news for a cluster operator, not
        # for someone running a job on a laptop. It goes to the log file instead.
        auth_log = logging.getLogger(RAY_AUTH_LOGGER)
        level = auth_log.level
        auth_log.setLevel(logging.ERROR if "RAY_AUTH_MODE" not in os.environ else level)
        try:
            ray.init(address=join, num_cpus=num_cpus, include_dashboard=False, **kwargs)
        finally:
            auth_log.setLevel(level)
        log.debug("local Ray started (auth mode: %s)", os.environ.get("RAY_AUTH_MODE", "token, Ray's default"))
    else:
        ray.init(address=join, **kwargs)  # Ray refuses num_cpus for a cluster it joins
    quiet_ray_data()


def quiet_ray_data() -> None:
    """No Ray Data progress bars or execution plans on the terminal: each job shows one
    progress line of its own (rows done, rejected, requests/s)."""
    import ray.data
    from ray.util.debug import log_once

    from bpo_ray.terminal import quiet_ray_consoles

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Ray Data warns once per process that its bars are off, which is our choice, not the
    # user's problem: take that once here so it is never printed.
    log_once("ray_data_progress_manager_disabled")
    quiet_ray_consoles()


def address_to_join(address: str | None, temp_dir: str | None = None) -> str:
    """What to pass ray.init as `address`, once the cluster behind it answers: "local" for a
    fresh local cluster, "auto" for the one `ray start` recorded (resolved by Ray exactly as
    for ray.init() with no address, auth token included), else the user's address unchanged.

    An explicit address (argument or RAY_ADDRESS) that does not answer is a ConfigError: the
    user asked for that cluster. A recorded one that does not answer (a head killed without
    `ray stop`) is skipped with a warning.
    """
    wanted, source = address_source(address)
    if wanted is None:
        recorded = recorded_address(temp_dir)
        if recorded is None:
            return "local"
        if gcs_answers(recorded):
            return "auto"
        log.warning("The Ray cluster recorded at %s does not answer; starting a fresh local Ray for "
                    "this run (`ray stop` clears the record).", recorded)
        return "local"
    if wanted == "local" or ("://" in wanted and not wanted.startswith("ray://")):
        return wanted  # nothing to probe; other schemes are an add-on's client, Ray reports those
    probe = _resolve_auto(source, temp_dir) if wanted == "auto" else wanted
    if tcp_target(probe) is None:
        raise ConfigError(f"{source} {wanted!r} is not host:port, ray://host:port, 'auto' or 'local'.")
    if not gcs_answers(probe):
        shown = wanted if probe == wanted else f"{wanted} ({probe})"
        raise ConfigError(f"The Ray cluster at {shown} from {source} does not answer. Check the address, "
                          f"run `ray stop` if that cluster is gone, or leave {source} unset to start a "
                          "fresh local Ray.")
    return wanted


def address_source(address: str | None) -> tuple[str | None, str | None]:
    """The address asked for and where it came from, in ray.init's order: the argument, else
    RAY_ADDRESS; (None, None) when neither is set."""
    if address:
        return address, FROM_ARGUMENT
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, FROM_ENV
    return None, None


def recorded_address(temp_dir: str | None = None) -> str | None:
    """The cluster the last `ray start` recorded on this machine, which ray.init() with no
    address joins (Ray's own lookup: ray_current_cluster in `temp_dir`, else in
    $RAY_TMPDIR/ray, $TMPDIR/ray or /tmp/ray); None when there is none."""
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(temp_dir) or None


def _resolve_auto(source: str, temp_dir: str | None) -> str:
    """The cluster "auto" stands for in Ray: the recorded one, else any running on this node."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", temp_dir)
    except ConnectionError as exc:
        raise ConfigError(f"{source} is 'auto' but no Ray cluster runs on this machine; "
                          f"leave {source} unset to start a fresh local Ray.") from exc


def gcs_answers(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at `address` (host:port, [v6]:port or
    ray://host:port) within `timeout_s` in all; False for an address of another form."""
    target = tcp_target(address)
    if target is None:
        return False
    deadline = time.monotonic() + timeout_s
    try:
        infos = socket.getaddrinfo(*target, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            try:
                sock.connect(sockaddr)
                return True
            except OSError:
                continue
    return False


def tcp_target(address: str) -> tuple[str, int] | None:
    """(host, port) of a host:port, [v6]:port or ray://host:port address, else None."""
    from ray._common.network_utils import parse_address

    if address.startswith("ray://"):
        address = address.removeprefix("ray://").split("/", 1)[0]
    parsed = parse_address(address)
    if parsed is None or not parsed[0] or not parsed[1].isdigit():
        return None
    return parsed[0], int(parsed[1])


def run_on_ray(address: str | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the cluster `ensure_ray(address)` joins or starts; a user error raised
    inside a Ray task (a bad file, a rejected key) comes out as itself, not as Ray's wrapper."""
    ensure_ray(address)
    import ray.data

    # A stage raises ModelUnavailableError to stop the job; Ray Data's default wrapper
    # (UserCodeException) would keep only its text, and the CLI needs the error itself.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    try:
        return fn(*args)
    except Exception as exc:
        if (user_error := user_error_in(exc)) is not None:
            raise user_error from None
        raise


def user_error_in(exc: BaseException) -> BpoRayError | None:
    """The BpoRayError behind a Ray task failure, if that is what it was.

    Ray wraps a task's exception (RayTaskError, Ray Data's UserCodeException); the user needs
    the original message naming the file and row, not the wrapper's traceback.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Ray's wrapper subclasses the user's exception type too; skip it for the original.
        if isinstance(current, BpoRayError) and type(current).__module__.startswith("bpo_ray"):
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


# How long the other nodes get to run their look at a shared path: a node's first task starts
# a worker process (seconds; longer where a job's working dir must be downloaded first).
SHARED_CHECK_TIMEOUT_S = 120.0
SHARED_CHECK_PREFIX = ".bpo-ray-shared-check-"


def check_shared_path(path: str, setting: str) -> None:
    """Fail with a ConfigError naming `setting` when processes on other nodes of the cluster
    would write to `path` but cannot see what the driver sees there: a node-local folder on a
    multi-node cluster (checkpoints scattered over the workers' disks, found by no one).

    The driver writes a marker file at `path`, and a CPU-free task pinned to each other alive
    node looks for it. A URI (s3://, gs://, ...) is shared by nature and is not checked;
    file:// is a local path and is. A single-node cluster needs no check. Call it on Ray.

    Stage jobs need no such check: the driver alone writes their tables (runner.py's
    TableWriters; in a streamed pipeline the StageLedger actors are pinned to the driver's
    node), so a local output folder is simply the driver's.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in path:
        if not path.startswith("file://"):
            return
        path = path.removeprefix("file://")
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    if not others:
        return
    token = uuid.uuid4().hex
    marker = Path(path).expanduser() / f"{SHARED_CHECK_PREFIX}{token}"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot write to {path} ({exc.strerror or exc})") from None
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(path_seen_here)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in others]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=SHARED_CHECK_TIMEOUT_S)
        seen = [_answer(ref) if ref in ready else None for ref in refs]
    finally:
        marker.unlink(missing_ok=True)
    blind = [n for n, ok in zip(others, seen) if ok is False]
    if blind:
        nodes = ", ".join(f"{n['NodeManagerAddress']} (node {n['NodeID'][:12]})" for n in blind)
        raise ConfigError(
            f"{setting}: {path} is not shared by the cluster's nodes: a file the driver wrote there is "
            f"missing on {nodes}. Workers on other nodes write there; use an s3:// or gs:// URI, or a "
            "shared filesystem (NFS and the like) mounted at the same path on every node.")
    if None in seen:  # a busy, starting or departing node: no answer is not a no
        log.warning("%s: %d node(s) did not say within %.0f s whether they see %s; not checked.",
                    setting, seen.count(None), SHARED_CHECK_TIMEOUT_S, path)


def _answer(ref) -> bool | None:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError:  # the node went away meanwhile: nothing to say about it
        return None


def path_seen_here(marker: str, token: str) -> bool:
    """Whether this node sees `marker` with `token` in it (the task `check_shared_path` pins
    to each node)."""
    try:
        return Path(marker).read_text() == token
    except OSError:
        return False
