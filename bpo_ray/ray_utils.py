"""Ray session helpers shared by every job: start or join a cluster, surface user errors."""

from __future__ import annotations

import logging
import os
import socket
import time
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
