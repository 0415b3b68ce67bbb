"""What model actors reserve, and which device a local model picks inside Ray."""

from __future__ import annotations

import pytest

from bpo_ray.errors import ConfigError
from bpo_ray.models.local import choose_device
from bpo_ray.models.resources import HTTP_ACTOR_CPUS, actor_resources
from bpo_ray.models.spec import ModelSpec

LOCAL = ModelSpec(provider="local", model="embedded")
HTTP = ModelSpec(provider="openai", model="m", base_url="http://127.0.0.1:1/v1")


def test_local_actors_reserve_a_gpu_only_where_the_cluster_has_gpus():
    assert actor_resources(LOCAL, cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 1}
    assert actor_resources(LOCAL, cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    # cpu on a GPU node: reserve none (and choose_device keeps it off the GPUs)
    assert actor_resources(LOCAL.model_copy(update={"device": "cpu"}), cluster_gpus=8)["num_gpus"] == 0
    # explicit cuda reserves one even where the driver sees none (a GPU worker joins later)
    assert actor_resources(LOCAL.model_copy(update={"device": "cuda"}), cluster_gpus=0)["num_gpus"] == 1
    # the user's numbers win: two actors per GPU, tensor-parallel groups, …
    assert actor_resources(LOCAL, cluster_gpus=8, num_gpus=0.5, num_cpus=4) == {"num_cpus": 4, "num_gpus": 0.5}


def test_http_actors_reserve_a_fraction_of_a_cpu_and_no_gpu():
    assert actor_resources(HTTP, cluster_gpus=8) == {"num_cpus": HTTP_ACTOR_CPUS, "num_gpus": 0}


@pytest.mark.parametrize("requested, cuda, gpu_ids, expected", [
    ("auto", True, None, "cuda"),      # outside Ray: the visible GPU
    ("auto", True, [0], "cuda"),       # Ray assigned one
    ("auto", True, [], "cpu"),         # reserved none: stay off the node's GPUs
    ("auto", False, [], "cpu"),
    ("cpu", True, [0], "cpu"),
    ("cuda", True, [], "cuda"),        # explicit: the user's call
])
def test_choose_device(requested, cuda, gpu_ids, expected):
    assert choose_device(requested, cuda_available=cuda, ray_gpu_ids=gpu_ids) == expected


def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="model.device"):
        choose_device("cuda", cuda_available=False, ray_gpu_ids=None)


def test_an_actor_that_reserved_no_gpu_is_told_so_by_ray(ray_local):
    """The input choose_device reads inside an actor: Ray's assigned GPU ids (none here)."""
    import ray

    from bpo_ray.models.local import _ray_gpu_ids

    @ray.remote(num_cpus=0)
    def ids():
        return _ray_gpu_ids()

    assert ray.get(ids.remote()) == []
    assert _ray_gpu_ids() is None  # the driver is not a Ray worker


def test_serve_replicas_get_the_same_reservation():
    from bpo_ray.serve.model_server import build_model_app

    app = build_model_app(LOCAL, cluster_gpus=4)
    options = app._bound_deployment.ray_actor_options
    assert options["num_gpus"] == 1
    app = build_model_app(LOCAL, cluster_gpus=0)
    assert app._bound_deployment.ray_actor_options["num_gpus"] == 0
