"""The Ray Serve model server, end to end over HTTP with the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from ray import serve

from bpo_ray.models import ChatResult, ModelSpec
from bpo_ray.serve.model_server import start_model_server
from bpo_ray.serve.openai_api import (
    ChatCompletionRequest, OpenAIError, to_chat_request, to_completion_json,
)
from tiny_model import MAX_POSITIONS  # tests/ is on sys.path (conftest)
from ports import free_port  # tests/ is on sys.path (conftest)

pytestmark = pytest.mark.slow

USER = [{"role": "user", "content": "Rewrite this prompt: tell me about cats"}]


def test_request_conversion_keeps_only_what_the_client_set() -> None:
    req = ChatCompletionRequest.model_validate({
        "model": "m", "user": "ignored", "max_tokens": 5, "max_completion_tokens": 7, "stop": "\n",
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "be "},
                                                       {"type": "text", "text": "brief"}]},
                     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ok,"}],
        "continue_final_message": True, "add_generation_prompt": False,
    })
    chat = to_chat_request(req)
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert chat.prefill == "Ok,"
    # Unset temperature/top_p/n/seed fall back to the server's ModelSpec.sampling.
    assert chat.sampling == {"max_tokens": 7, "stop": ["\n"]}


def test_failed_result_status_follows_retryability() -> None:
    with pytest.raises(OpenAIError) as info:
        to_completion_json(ChatResult(error="boom", retryable=True), model="m", request_id="1")
    assert (info.value.status, info.value.type, info.value.message) == (500, "server_error", "boom")
    with pytest.raises(OpenAIError) as info:
        to_completion_json(ChatResult(error="too long"), model="m", request_id="1")
    assert (info.value.status, info.value.type) == (400, "invalid_request_error")


@pytest.fixture(scope="module")
def model_id(tiny_model_dir: Path) -> str:
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def base_url(model_id: str, ray_local: None) -> Iterator[str]:
    try:
        spec = ModelSpec(provider="local", model=model_id, concurrency=8)
        yield start_model_server(spec, port=free_port(), name="test-model")
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=60)


def _raw(url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """GET (body None) or POST JSON; the status and the decoded JSON body, errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _greedy(client: openai.OpenAI, model_id: str, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", USER)
    kwargs.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=model_id, temperature=0, **kwargs)


def test_lists_the_served_model(client: openai.OpenAI, model_id: str) -> None:
    assert [m.id for m in client.models.list().data] == [model_id]


def test_n_choices_and_usage(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(model=model_id, messages=USER, n=2, max_tokens=8,
                                          temperature=1.0, seed=1)
    assert resp.object == "chat.completion" and resp.model == model_id
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.message.role == "assistant" and isinstance(c.message.content, str)
               for c in resp.choices)
    assert all(c.finish_reason in {"stop", "length"} for c in resp.choices)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_greedy_is_deterministic(client: openai.OpenAI, model_id: str) -> None:
    first = _greedy(client, model_id).choices[0].message.content
    assert _greedy(client, model_id).choices[0].message.content == first


def test_stop_string_cuts_the_reply(client: openai.OpenAI, model_id: str) -> None:
    full = _greedy(client, model_id, max_tokens=16).choices[0].message.content
    # A printable ASCII character after the first: the random model also emits broken UTF-8.
    stop = next((ch for ch in full[1:] if ch.isascii() and ch.isprintable()), None)
    assert stop is not None, f"no usable stop string in the greedy reply {full!r}"
    cut = _greedy(client, model_id, max_tokens=16, stop=[stop]).choices[0]
    assert cut.message.content == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_logprobs_with_alternatives(client: openai.OpenAI, model_id: str) -> None:
    choice = _greedy(client, model_id, logprobs=True, top_logprobs=2).choices[0]
    entries = choice.logprobs.content
    assert entries
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert all(alt.logprob <= 0 for alt in entry.top_logprobs)
        assert entry.bytes == list(entry.token.encode())
    assert _greedy(client, model_id).choices[0].logprobs is None


def test_continue_final_message(client: openai.OpenAI, model_id: str) -> None:
    prefill = "Sure, here is"
    messages = [*USER, {"role": "assistant", "content": prefill}]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    first = _greedy(client, model_id, messages=messages, extra_body=extra)
    again = _greedy(client, model_id, messages=messages, extra_body=extra)
    plain = _greedy(client, model_id)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert not first.choices[0].message.content.startswith(prefill)
    # The pre-filled turn is part of the prompt, not a message the reply answers.
    assert first.usage.prompt_tokens > plain.usage.prompt_tokens


def test_continue_final_message_needs_an_assistant_turn(base_url: str, model_id: str) -> None:
    status, body = _raw(f"{base_url}/chat/completions",
                        {"model": model_id, "messages": USER, "continue_final_message": True})
    assert status == 400 and body["error"]["param"] == "messages"


@pytest.mark.parametrize(("body", "param"), [
    ({}, "messages"),
    ({"messages": USER, "temperature": 5}, "temperature"),
    ({"messages": USER, "stream": True}, "stream"),
    ({"messages": USER, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
])
def test_malformed_requests_get_openai_errors(base_url: str, model_id: str,
                                              body: dict[str, Any], param: str) -> None:
    status, resp = _raw(f"{base_url}/chat/completions", {"model": model_id, **body})
    assert status == 400
    assert set(resp["error"]) == {"message", "type", "param", "code"}
    assert resp["error"]["type"] == "invalid_request_error"
    assert resp["error"]["param"] == param and resp["error"]["message"]


def test_unknown_model_is_404(base_url: str, client: openai.OpenAI) -> None:
    status, body = _raw(f"{base_url}/chat/completions", {"model": "gpt-9", "messages": USER})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=USER)  # type: ignore[arg-type]


def test_prompt_too_long_is_400(base_url: str, model_id: str) -> None:
    # One token per byte: longer than the position table, so the backend answers with an error.
    long = [{"role": "user", "content": "x" * (MAX_POSITIONS + 100)}]
    status, body = _raw(f"{base_url}/chat/completions", {"model": model_id, "messages": long})
    assert status == 400  # as OpenAI answers: retrying cannot help, so clients must not
    assert body["error"]["type"] == "invalid_request_error" and "too long" in body["error"]["message"]


def test_invalid_json_is_400(base_url: str) -> None:
    req = urllib.request.Request(f"{base_url}/chat/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"


def test_concurrent_requests_are_batched(base_url: str, model_id: str) -> None:
    health_url = base_url.removesuffix("/v1") + "/health"
    before = _raw(health_url)[1]

    async def run_all() -> list[Any]:
        aclient = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=60)
        calls = [aclient.chat.completions.create(
            model=model_id, max_tokens=16, temperature=0,
            messages=[{"role": "user", "content": f"prompt number {i}"}]) for i in range(8)]
        try:
            return await asyncio.gather(*calls)
        finally:
            await aclient.close()

    results = asyncio.run(run_all())
    assert len(results) == 8 and all(r.choices[0].message.content is not None for r in results)
    after = _raw(health_url)[1]
    assert after["batched_requests"] - before["batched_requests"] == 8
    # Fewer backend calls than requests: the replica grouped them.
    assert after["batches"] - before["batches"] < 8
    assert after["largest_batch"] > 1


def test_project_http_backend_against_the_server(base_url: str, model_id: str) -> None:
    """The model layer's HTTP backend end to end against the project's own server: the same
    path construct takes in the demo, here with the local backend's answers as the reference."""
    from bpo_ray.models import ChatRequest, build_backend

    spec = ModelSpec(provider="openai", model=model_id, base_url=base_url, supports_prefill=True,
                     sampling={"max_tokens": 6}, rate_limit={"requests_per_s": 50})
    local = build_backend(ModelSpec(provider="local", model=model_id, sampling={"max_tokens": 6}))
    requests = [ChatRequest([{"role": "user", "content": f"question {i}"}]) for i in range(4)]
    requests.append(ChatRequest([{"role": "user", "content": "go"}], prefill="Answer:"))
    requests.append(ChatRequest([{"role": "user", "content": "x" * (MAX_POSITIONS + 100)}]))

    async def both():
        http = build_backend(spec)
        try:
            return await http.chat_batch(requests), await local.chat_batch(requests)
        finally:
            await http.aclose()

    over_http, in_process = asyncio.run(both())
    for remote, direct in zip(over_http[:5], in_process[:5]):
        assert remote.ok and remote.texts == direct.texts  # greedy: identical through HTTP
        assert remote.prompt_tokens == direct.prompt_tokens and remote.requests == 1
    too_long = over_http[5]
    assert not too_long.ok and not too_long.retryable and too_long.retries == 0 and "HTTP 400" in too_long.error
