"""What a model actor (a Ray Data stage actor or a Serve replica) reserves from Ray.

HTTP actors mostly wait on the network: a fraction of a CPU, so they never queue behind model
actors on a small node. A local model computes: one CPU, and one GPU per actor when the cluster
has GPUs (a vLLM engine: its tensor_parallel_size), so that Ray gives each actor its own device
(an actor that reserves none still sees every GPU of its node and would load onto cuda:0 with
the others).
"""

from __future__ import annotations

from bpo_ray.models.spec import ModelSpec

HTTP_ACTOR_CPUS = 0.25


def actor_resources(spec: ModelSpec, *, cluster_gpus: float, num_cpus: float | None = None,
                    num_gpus: float | None = None) -> dict[str, float]:
    """{'num_cpus': ..., 'num_gpus': ...} for one actor holding `spec`; explicit values win."""
    if spec.is_http:
        return {"num_cpus": HTTP_ACTOR_CPUS if num_cpus is None else num_cpus, "num_gpus": num_gpus or 0}
    if num_gpus is None:
        wants_gpu = spec.device == "cuda" or (spec.device == "auto" and cluster_gpus >= 1)
        # A vLLM engine shards over tensor_parallel_size GPUs, all inside its one actor.
        num_gpus = (spec.vllm.tensor_parallel_size if spec.provider == "vllm" else 1) if wants_gpu else 0
    return {"num_cpus": 1 if num_cpus is None else num_cpus, "num_gpus": num_gpus}


def cluster_gpus() -> float:
    """GPUs the running Ray cluster reports (0 when none, or when Ray is not up)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
