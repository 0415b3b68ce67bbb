"""The BPO serving graph end to end: the real `openai` client against `serve.run` on a local Ray,
with an optimizer behind a scripted HTTP server, a tiny local target and an API target."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import openai
import pytest
from ports import free_port  # tests/ is on sys.path (conftest)
from ray import serve

from bpo_ray.serve.config import ServeConfig
from bpo_ray.serve.graph import OPTIMIZED_PROMPT_HEADER, start_graph
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

# Accepted keys are read from the replicas' environment, which Ray's workers take from this
# process when the session's Ray starts: set before any test runs (collection imports this).
SERVE_KEY_ENV = "BPO_TEST_SERVE_KEY"
os.environ.setdefault(SERVE_KEY_ENV, "test-key-1234")

OWLS = "Tell me about owls."
REWRITE = " Describe where they live, what they eat and how they hunt."


def rewrite(body: dict) -> str:
    prompt = body["messages"][-1]["content"].split("\n\n", 1)[1]
    return prompt if "ECHO" in prompt else prompt + REWRITE  # an echo: the guards keep the prompt


def answer(body: dict) -> str:
    return "ANSWER: " + body["messages"][-1]["content"]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ScriptedOpenAIServer, ScriptedOpenAIServer]]:
    with ScriptedOpenAIServer(reply_fn=rewrite) as optimizer, ScriptedOpenAIServer(reply_fn=answer) as target:
        yield optimizer, target


@pytest.fixture(scope="module")
def base_url(servers, tiny_model_dir: Path, ray_local: None) -> Iterator[str]:
    optimizer, target = servers
    cfg = ServeConfig.model_validate({
        "optimizer": {"provider": "openai", "model": "scripted", "base_url": optimizer.base_url},
        "targets": [
            {"model": str(tiny_model_dir), "name": "tiny", "device": "cpu", "sampling": {"max_tokens": 8},
             "deployment": {"num_cpus": 0.5}},
            {"provider": "openai", "model": "scripted", "base_url": target.base_url, "name": "api"},
        ],
        "port": free_port(),
        "max_prompt_chars": 2000,
    })
    try:
        yield start_graph(cfg, name="test-graph")
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def secure_url(base_url: str, servers) -> str:
    """The same graph with API keys on, beside the first under /secure."""
    optimizer, target = servers
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    api = {"provider": "openai", "model": "scripted"}
    cfg = ServeConfig.model_validate({
        "optimizer": {**api, "base_url": optimizer.base_url},
        "targets": [{**api, "base_url": target.base_url, "name": "api"}],
        "port": port, "route_prefix": "/secure", "api_keys_env": [SERVE_KEY_ENV],
    })
    return start_graph(cfg, name="secure-graph")


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def slow_api_graph(base_url: str, name: str, deployment: dict, latency_s: float) -> Iterator[tuple[str, ScriptedOpenAIServer]]:
    """A graph beside the module's (same Serve, under /NAME) whose one target, `slow`, proxies an
    API answering after `latency_s`: (its base URL, that API's server)."""
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    with ScriptedOpenAIServer(reply_fn=answer, latency_s=latency_s) as slow:
        api = {"provider": "openai", "model": "scripted", "base_url": slow.base_url}
        cfg = ServeConfig.model_validate({"optimizer": api, "port": port, "route_prefix": f"/{name}",
                                          "targets": [{**api, "name": "slow", "deployment": deployment}]})
        try:
            yield start_graph(cfg, name=name), slow
        finally:
            serve.delete(name)


def test_every_target_is_listed_plain_and_optimized(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny", "bpo/tiny", "api", "bpo/api"]


def test_plain_goes_straight_and_bpo_sends_the_optimized_prompt(client: openai.OpenAI, servers) -> None:
    _, target = servers
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": OWLS}]
    plain = client.chat.completions.create(model="api", messages=messages)
    assert plain.choices[0].message.content == f"ANSWER: {OWLS}"
    assert plain.model_extra.get("bpo") is None

    raw = client.chat.completions.with_raw_response.create(model="bpo/api", messages=messages)
    done = raw.parse()
    bpo = done.model_extra["bpo"]
    assert bpo["optimized_prompt"] == OWLS + REWRITE and bpo["unchanged"] is False, bpo
    assert unquote(raw.headers[OPTIMIZED_PROMPT_HEADER]) == OWLS + REWRITE
    assert done.choices[0].message.content == f"ANSWER: {OWLS}{REWRITE}" and done.model == "bpo/api"
    # The target got the whole conversation with the last user turn rewritten.
    assert target.stats.bodies[-1]["messages"] == [messages[0], {"role": "user", "content": OWLS + REWRITE}]
    # The optimizer's tokens are counted apart from the answer's.
    assert bpo["usage"]["prompt_tokens"] > 0 and bpo["usage"]["completion_tokens"] > 0
    assert done.usage.prompt_tokens == len(f"Be kind. {OWLS}{REWRITE}".split())


def test_a_rewrite_the_guards_reject_leaves_the_prompt(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="bpo/api", messages=[{"role": "user", "content": "ECHO this."}])
    assert done.model_extra["bpo"]["unchanged"] and done.model_extra["bpo"]["optimized_prompt"] == "ECHO this."
    assert done.choices[0].message.content == "ANSWER: ECHO this."


def test_streaming_gives_the_same_answer_in_chunks(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": OWLS}]
    whole = client.chat.completions.create(model="bpo/api", messages=messages)
    chunks = list(client.chat.completions.create(model="bpo/api", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    # Relayed as the upstream API streams it (the scripted server: word by word).
    assert len(pieces) == len(whole.choices[0].message.content.split()) > 1
    assert chunks[0].model_extra["bpo"]["optimized_prompt"] == OWLS + REWRITE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_local_target_answers_both_ways(client: openai.OpenAI) -> None:
    for model in ("tiny", "bpo/tiny"):
        ask = {"model": model, "messages": [{"role": "user", "content": OWLS}], "temperature": 0, "max_tokens": 6}
        done = client.chat.completions.create(**ask)
        assert done.choices[0].message.content and 0 < done.usage.completion_tokens <= 6
        chunks = list(client.chat.completions.create(**ask, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == done.choices[0].message.content
        assert ("bpo" in chunks[0].model_extra) == model.startswith("bpo/")


def test_overload_is_503_with_retry_after(base_url: str) -> None:
    """A target whose replica takes one request and queues at most one more: the rest are turned away
    at once with 503 and Retry-After, streamed or not, and every one that was taken is answered."""
    from concurrent.futures import ThreadPoolExecutor

    with slow_api_graph(base_url, "busy", {"max_ongoing_requests": 1, "max_queued_requests": 1}, 1.5) as (url, slow):

        def ask(i: int) -> tuple[int, str | None, float]:
            body = {"model": "slow", "messages": [{"role": "user", "content": f"q{i}"}], "stream": i % 2 == 1}
            request = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                             headers={"content-type": "application/json"})
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    text = resp.read().decode()
                    assert f"q{i}" in text
                    return resp.status, None, time.monotonic() - started
            except urllib.error.HTTPError as exc:
                assert json.loads(exc.read())["error"]["code"] == "overloaded"
                return exc.code, exc.headers.get("Retry-After"), time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(ask, range(8)))
    statuses = sorted(status for status, _, _ in outcomes)
    assert 1 <= statuses.count(200) < 8 and set(statuses) == {200, 503}, outcomes
    assert all(retry == "1" and took < 1.0 for status, retry, took in outcomes if status == 503)  # at once
    assert slow.stats.requests == statuses.count(200)


def test_optimize_route(base_url: str) -> None:
    status, body = _post(f"{base_url}/optimize", {"prompt": OWLS})
    assert status == 200 and body["optimized_prompt"] == OWLS + REWRITE and not body["unchanged"]


def test_errors_in_openai_shape(base_url: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="bpo/nope", messages=[{"role": "user", "content": "hi"}])
    status, body = _post(f"{base_url}/chat/completions", {"model": "api"})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = _post(f"{base_url}/chat/completions", "{not json")
    assert status == 400 and "error" in body
    status, body = _post(f"{base_url}/chat/completions",
                         {"model": "bpo/api", "messages": [{"role": "user", "content": "x" * 2001}]})
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = _post(f"{base_url}/chat/completions",
                         {"model": "bpo/api", "messages": [{"role": "system", "content": "no user turn"}]})
    assert status == 400 and body["error"]["param"] == "messages"
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/healthz", timeout=30) as resp:
        assert json.loads(resp.read())["models"] == ["tiny", "bpo/tiny", "api", "bpo/api"]


def test_the_deploy_config_in_the_repo_is_valid() -> None:
    import yaml

    config = yaml.safe_load((Path(__file__).parents[2] / "configs" / "serve-embedded.yaml").read_text())
    application = config["applications"][0]
    assert application["import_path"] == "bpo_ray.serve.graph:app"
    cfg = ServeConfig.model_validate(application["args"])
    target = cfg.targets[0]
    options = target.deployment.options(target.model_spec(), cluster_gpus=0)
    assert options["autoscaling_config"]["max_replicas"] == 2 and "num_replicas" not in options


def test_api_keys_guard_every_route_but_health(secure_url: str) -> None:
    key = os.environ[SERVE_KEY_ENV]
    good = openai.OpenAI(base_url=secure_url, api_key=key, max_retries=0)
    done = good.chat.completions.create(model="bpo/api", messages=[{"role": "user", "content": OWLS}])
    assert done.choices[0].message.content == f"ANSWER: {OWLS}{REWRITE}"
    for wrong in ("nope", key + "x"):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=secure_url, api_key=wrong, max_retries=0).models.list()
    status, body = _post(f"{secure_url}/optimize", {"prompt": OWLS})
    assert status == 401 and body["error"]["code"] == "invalid_api_key" and key not in json.dumps(body)
    status, body = _post(f"{secure_url}/optimize", {"prompt": OWLS}, {"authorization": f"Bearer {key}"})
    assert status == 200 and body["optimized_prompt"] == OWLS + REWRITE
    with urllib.request.urlopen(secure_url.removesuffix("/v1") + "/healthz", timeout=30) as resp:
        assert resp.status == 200  # load balancers probe without a key


def test_sustained_load_scales_a_target_up_and_back_down(base_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def replicas() -> int:
        deployment = serve.status().applications["scaling"].deployments["Target-slow"]
        return deployment.replica_states.get("RUNNING", 0)

    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0.5,
               "downscale_delay_s": 2, "look_back_period_s": 2}
    with slow_api_graph(base_url, "scaling", scaling, 0.5) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert replicas() == 1
        seen, answered = [1], []
        deadline = time.monotonic() + 60

        def ask(i: int) -> None:
            while time.monotonic() < deadline and max(seen) < 2:
                done = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": f"q{i}"}])
                answered.append(done.choices[0].message.content == f"ANSWER: q{i}")

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(ask, i) for i in range(12)]
            while time.monotonic() < deadline and max(seen) < 2:
                seen.append(replicas())
                time.sleep(0.5)
            for future in futures:
                future.result()
        assert max(seen) == 2 and answered and all(answered)
        while time.monotonic() < deadline + 60 and replicas() > 1:
            time.sleep(1)
        assert replicas() == 1  # back down once the load is gone


def test_live_evaluation_of_the_served_graph(base_url: str, servers, tmp_path: Path) -> None:
    from bpo_ray.data.ledger import read_table
    from bpo_ray.evaluate.config import EvaluateConfig
    from bpo_ray.evaluate.job import run_evaluate

    _, target = servers
    questions = [f"Question {i} about owls?" for i in range(6)] + ["ECHO this one."]
    testset = tmp_path / "testset.jsonl"
    testset.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(questions)))

    def longer(body: dict) -> str:  # the judge prefers the longer answer
        user = body["messages"][-1]["content"]
        a = user.split("[Answer A]\n", 1)[1].split("\n[End of answer A]", 1)[0]
        b = user.split("[Answer B]\n", 1)[1].split("\n[End of answer B]", 1)[0]
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"

    with ScriptedOpenAIServer(reply_fn=longer) as judge:
        cfg = EvaluateConfig(input=[str(testset)], output=str(tmp_path / "live"),
                             endpoint={"base_url": base_url, "model": "api", "max_retries": 0},
                             judge={"provider": "openai", "model": "scripted", "base_url": judge.base_url})
        summary = run_evaluate(cfg)
        asked = target.stats.requests
        again = run_evaluate(cfg)
        assert target.stats.requests == asked and judge.stats.requests == 2 * len(questions)  # resumed: no call
    answers = {r["id"]: r for r in read_table(str(tmp_path / "live" / "answers"), "responses", "parquet").to_pylist()}
    assert answers["q0"]["optimized_prompt"] == questions[0] + REWRITE and not answers["q0"]["unchanged"]
    assert answers["q0"]["original_response"] == f"ANSWER: {questions[0]}"
    assert answers["q0"]["optimized_response"] == f"ANSWER: {questions[0]}{REWRITE}"
    assert answers["q6"]["unchanged"] and answers["q6"]["optimized_response"] == answers["q6"]["original_response"]
    assert summary["live_answers"]["rows_out"] == len(questions) and summary["live_answers"]["requests"] == 14
    overall = summary["overall"]
    assert (overall["n"], overall["win"], overall["tie"], overall["lose"]) == (7, 6, 1, 0)
    assert again["rows_skipped"] == 14 and again["overall"] == overall


def test_live_evaluation_of_the_embedded_graph_end_to_end(base_url: str, tmp_path: Path) -> None:
    """`bpo-ray serve`'s default graph (the embedded model as optimizer and as target) evaluated
    live: each prompt answered as `embedded` and `bpo/embedded`, the answer pairs judged."""
    from bpo_ray.data.ledger import read_table
    from bpo_ray.evaluate.config import EvaluateConfig
    from bpo_ray.evaluate.job import run_evaluate

    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    # Half a CPU each: the module's other graphs hold some of the session's 4, and the
    # evaluation's own actors need the rest.
    cfg = ServeConfig.model_validate({"port": port, "route_prefix": "/embedded", "mode": "greedy",
                                      "optimizer": {"model": "embedded", "sampling": {"max_tokens": 48}},
                                      "optimizer_deployment": {"num_cpus": 0.5},
                                      "targets": [{"model": "embedded", "deployment": {"num_cpus": 0.5}}]})
    url = start_graph(cfg, name="embedded-graph")
    questions = ["How do I boil an egg?", "Write a haiku about rain.", "What is a prime number?"]
    testset = tmp_path / "testset.jsonl"
    testset.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(questions)))

    def longer(body: dict) -> str:
        user = body["messages"][-1]["content"]
        a = user.split("[Answer A]\n", 1)[1].split("\n[End of answer A]", 1)[0]
        b = user.split("[Answer B]\n", 1)[1].split("\n[End of answer B]", 1)[0]
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"

    with ScriptedOpenAIServer(reply_fn=longer) as judge:
        summary = run_evaluate(EvaluateConfig(
            input=[str(testset)], output=str(tmp_path / "live"),
            endpoint={"base_url": url, "model": "embedded", "sampling": {"temperature": 0, "max_tokens": 32}},
            judge={"provider": "openai", "model": "scripted", "base_url": judge.base_url}))
    served = {q: _post(f"{url}/optimize", {"prompt": q})[1] for q in questions}
    serve.delete("embedded-graph")

    answers = {r["id"]: r for r in read_table(str(tmp_path / "live" / "answers"), "responses", "parquet").to_pylist()}
    assert sorted(answers) == ["q0", "q1", "q2"]
    for i, q in enumerate(questions):
        row = answers[f"q{i}"]
        # The optimized prompt recorded is the one the graph serves (greedy: the same again).
        assert row["optimized_prompt"] == served[q]["optimized_prompt"] and row["unchanged"] == served[q]["unchanged"]
        assert row["optimize_model"] == "embedded" and row["original_response"] and row["optimized_response"]
    assert summary["live_answers"]["rows_out"] == 3 and summary["live_answers"]["requests"] == 6  # no retry
    overall = summary["overall"]
    assert overall["n"] == 3 and overall["win"] + overall["tie"] + overall["lose"] == 3
    judged = read_table(str(tmp_path / "live"), "judgments", "parquet").to_pylist()
    assert {r["optimizer"] for r in judged} == {"embedded"} and {r["target"] for r in judged} == {"embedded"}


def test_a_replica_killed_under_load_is_replaced_and_no_client_hangs(base_url: str) -> None:
    import collections
    import threading

    import ray

    with slow_api_graph(base_url, "killing", {"min_replicas": 2, "max_replicas": 2}, 0.3) as (url, slow):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        outcomes: list[str] = []
        stop = threading.Event()

        def ask(worker: int) -> None:
            for n in range(1000):
                if stop.is_set():
                    return
                prompt = f"w{worker}-{n}"
                try:
                    done = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": prompt}])
                    outcomes.append("ok" if done.choices[0].message.content == f"ANSWER: {prompt}" else "wrong")
                except (openai.InternalServerError, openai.APIConnectionError):
                    outcomes.append("retryable")  # 5xx or a dropped connection: the client may retry

        workers = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for worker in workers:
            worker.start()
        time.sleep(3)
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if "killing" in a["name"] and "Target-slow" in a["name"])
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        before = len(outcomes)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            deployment = serve.status().applications["killing"].deployments["Target-slow"]
            if deployment.replica_states.get("RUNNING", 0) == 2 and len(outcomes) > before + 20:
                break
            time.sleep(0.5)
        stop.set()
        for worker in workers:
            worker.join(timeout=40)
            assert not worker.is_alive(), "a client hung"
        sent = collections.Counter(body["messages"][-1]["content"] for body in slow.stats.bodies)
    assert deployment.replica_states.get("RUNNING", 0) == 2  # replaced
    assert "wrong" not in outcomes and outcomes[before:].count("ok") > 20  # served on after the kill
    assert max(sent.values()) == 1  # no request answered twice
    print(f"outcomes: {collections.Counter(outcomes)}")
