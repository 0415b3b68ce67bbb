"""Ray session helpers shared by every job: start or join a cluster, surface user errors."""

from __future__ import annotations

import logging
import os

from bpo_ray.errors import BpoRayError

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster given by `address` or RAY_ADDRESS (as under `ray job submit`);
    otherwise start a local one. A no-op when Ray is already up in this process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    import ray.data

    # Row order matters to nobody downstream (rows carry ids) but the progress bars do.
    ray.data.DataContext.get_current().enable_progress_bars = True


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
