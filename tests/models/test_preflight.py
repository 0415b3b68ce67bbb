"""check_model: the one look at the model a job takes before any actor starts."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from bpo_ray.errors import ModelUnavailableError
from bpo_ray.models import ModelSpec, check_model
from bpo_ray.testing.scripted_server import Fault, ScriptedOpenAIServer


def http(url: str, **kw) -> ModelSpec:
    return ModelSpec(provider="openai", model="scripted", base_url=url, api_key_env="BPO_TEST_KEY", **kw)


def test_a_listed_model_costs_no_chat_request():
    with ScriptedOpenAIServer(reply_fn=lambda b: "x") as srv:
        check_model(http(srv.base_url))
        assert srv.stats.requests == 0


def test_an_unlisted_model_that_answers_passes_with_one_tiny_request():
    with ScriptedOpenAIServer(reply_fn=lambda b: "x", model="listed-one") as srv:
        check_model(http(srv.base_url))
        assert srv.stats.requests == 1 and srv.stats.bodies[0]["max_tokens"] == 1


def test_forbidden_names_the_key_variable(monkeypatch):
    monkeypatch.setenv("BPO_TEST_KEY", "k")
    with ScriptedOpenAIServer(reply_fn=lambda b: "x", model="other", script=[Fault(status=403)]) as srv:
        with pytest.raises(ModelUnavailableError, match=r"HTTP 403.*model.api_key_env \(BPO_TEST_KEY\)"):
            check_model(http(srv.base_url))


def test_a_busy_server_does_not_fail_the_check():
    # Listed models answer; a 503 on the tiny request would not be the model's fault.
    with ScriptedOpenAIServer(reply_fn=lambda b: "x", model="other", script=[Fault(status=503)]) as srv:
        check_model(http(srv.base_url))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_is_job_fatal():
    with pytest.raises(ModelUnavailableError, match="model.provider: 'vllm' needs vLLM"):
        check_model(ModelSpec(provider="vllm", model="m"))


def test_local_folder_without_weights_or_tokenizer(tmp_path, tiny_model_dir):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelUnavailableError, match="has no weights"):
        check_model(ModelSpec(provider="local", model=str(no_weights)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="model.model: cannot load"):
        check_model(ModelSpec(provider="local", model=str(empty)))
    check_model(ModelSpec(provider="local", model=str(tiny_model_dir)))
