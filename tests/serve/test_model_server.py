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

from bpo_ray.models import ChatRequest, ChatResult, ModelSpec, build_backend
from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.serve.model_server import start_model_server
from bpo_ray.serve.openai_api import (
    ChatCompletionRequest, CompletionRequest, OpenAIError, to_chat_request, to_completion_json,
    to_text_completion_json, to_text_request,
)
from tiny_model import MAX_POSITIONS  # tests/ is on sys.path (conftest)
from ports import free_port  # tests/ is on sys.path (conftest)

pytestmark = pytest.mark.slow

USER = [{"role": "user", "content": "Rewrite this prompt: tell me about cats"}]
PROMPT = OptimizerTemplate().wrap(None, "tell me about cats")  # plain text: no tokenizer needed


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


def test_text_request_conversion() -> None:
    req = CompletionRequest.model_validate({
        "model": "m", "prompt": [PROMPT], "user": "ignored", "stop": "\n", "logprobs": 0,
        "add_special_tokens": False,
    })
    text = to_text_request(req)
    assert text.prompt == PROMPT and text.messages == [] and text.add_special_tokens is False
    assert text.sampling == {"max_tokens": 16, "stop": ["\n"]}  # OpenAI's default for completions
    assert text.logprobs and text.top_logprobs == 0  # logprobs=0: the chosen tokens' only
    plain = to_text_request(CompletionRequest(model="m", prompt="x", max_tokens=None))
    assert plain.add_special_tokens and not plain.logprobs and plain.sampling == {}


@pytest.mark.parametrize(("body", "param"), [
    ({"echo": True}, "echo"),
    ({"suffix": ""}, "suffix"),
    ({"stream": True}, "stream"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt"),
])
def test_unsupported_text_requests_are_400(body: dict[str, Any], param: str) -> None:
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x", **body})
    with pytest.raises(OpenAIError) as info:
        to_text_request(req)
    assert (info.value.status, info.value.param) == (400, param)


@pytest.mark.parametrize("to_json", [to_completion_json, to_text_completion_json])
def test_failed_result_status_follows_retryability(to_json: Any) -> None:
    with pytest.raises(OpenAIError) as info:
        to_json(ChatResult(error="boom", retryable=True), model="m", request_id="1")
    assert (info.value.status, info.value.type, info.value.message) == (500, "server_error", "boom")
    with pytest.raises(OpenAIError) as info:
        to_json(ChatResult(error="too long"), model="m", request_id="1")
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


def _streamed(client: openai.OpenAI, model_id: str, **kwargs: Any) -> tuple[dict[int, list[str]], list[Any]]:
    """Each choice's content pieces, and every chunk."""
    kwargs.setdefault("messages", USER)
    chunks = list(client.chat.completions.create(model=model_id, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, **kwargs))
    pieces: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.setdefault(choice.index, []).append(choice.delta.content)
    return pieces, chunks


def test_streaming_sends_the_answer_token_by_token(client: openai.OpenAI, model_id: str) -> None:
    whole = _greedy(client, model_id, max_tokens=24)
    pieces, chunks = _streamed(client, model_id, max_tokens=24)
    assert "".join(pieces[0]) == whole.choices[0].message.content
    # Sent as it was written (the tiny model writes mostly broken UTF-8, held back until it is
    # whole; tests/models/test_local.py streams real text token by token).
    assert len(pieces[0]) > 1, pieces
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_never_sends_text_a_stop_string_cuts(client: openai.OpenAI, model_id: str) -> None:
    free = _greedy(client, model_id, max_tokens=24).choices[0].message.content
    stop = free[len(free) // 2 : len(free) // 2 + 3]  # three characters from the middle of the answer
    whole = _greedy(client, model_id, max_tokens=24, stop=[stop])
    pieces, _ = _streamed(client, model_id, max_tokens=24, stop=[stop])
    assert stop not in "".join(pieces[0])
    assert "".join(pieces[0]) == whole.choices[0].message.content == free[: free.index(stop)]


def test_streaming_n_choices_each_get_their_text(client: openai.OpenAI, model_id: str) -> None:
    whole = _greedy(client, model_id, max_tokens=10)
    pieces, chunks = _streamed(client, model_id, max_tokens=10, n=2)
    assert sorted(pieces) == [0, 1]
    assert "".join(pieces[0]) == "".join(pieces[1]) == whole.choices[0].message.content
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1]


def test_streamed_and_whole_requests_share_batches(base_url: str, client: openai.OpenAI, model_id: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = _greedy(client, model_id, max_tokens=12).choices[0].message.content
    _, before = _raw(base_url.removesuffix("/v1") + "/health")
    with ThreadPoolExecutor(8) as pool:
        streamed = [pool.submit(_streamed, client, model_id, max_tokens=12) for _ in range(4)]
        whole = [pool.submit(_greedy, client, model_id, max_tokens=12) for _ in range(4)]
        texts = ["".join(f.result()[0][0]) for f in streamed] + [f.result().choices[0].message.content for f in whole]
    _, after = _raw(base_url.removesuffix("/v1") + "/health")
    assert texts == [expected] * 8
    assert after["batched_requests"] - before["batched_requests"] == 8
    assert after["batches"] - before["batches"] < 8  # some were answered together


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
    ({"messages": USER, "stream": True, "logprobs": True}, "logprobs"),
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
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-9", prompt=PROMPT)
    assert info.value.code == "model_not_found"


def test_text_completion(client: openai.OpenAI, model_id: str) -> None:
    resp = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=8, temperature=0,
                                     logprobs=2)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-") and resp.model == model_id
    [choice] = resp.choices
    assert choice.index == 0 and isinstance(choice.text, str) and choice.finish_reason in {"stop", "length"}
    assert resp.usage.prompt_tokens == len(PROMPT.encode())  # one token per byte, no specials
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) \
        == len(logprobs.text_offset) == resp.usage.completion_tokens
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert 1 <= len(top) <= 2 and token in top
        assert logprob == pytest.approx(max(top.values()))  # greedy: the best alternative
    again = client.completions.create(model=model_id, prompt=[PROMPT], max_tokens=8, temperature=0)
    assert again.choices[0].text == choice.text and again.choices[0].logprobs is None


def test_text_completion_defaults_to_16_tokens(base_url: str, model_id: str) -> None:
    status, body = _raw(f"{base_url}/completions", {"model": model_id, "prompt": PROMPT, "temperature": 0})
    assert status == 200 and body["object"] == "text_completion"
    used = body["usage"]["completion_tokens"]
    assert used == 16 or (used < 16 and body["choices"][0]["finish_reason"] == "stop")


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"echo": True}, "echo"),
    ({"prompt": [PROMPT, PROMPT]}, "prompt"),
    ({"stream": True}, "stream"),
    ({"logprobs": 6}, "logprobs"),
])
def test_unsupported_text_completions_are_400(client: openai.OpenAI, model_id: str,
                                               kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_id, **{"prompt": PROMPT, "max_tokens": 4, **kwargs})
    assert info.value.param == param and info.value.type == "invalid_request_error"


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


def answer_both(spec: ModelSpec, local, requests: list[ChatRequest]):
    """The same requests through the HTTP backend (the server) and in process."""
    async def both():
        http = build_backend(spec)
        try:
            return await http.chat_batch(requests), await local.chat_batch(requests)
        finally:
            await http.aclose()

    return asyncio.run(both())


def test_project_http_backend_against_the_server(base_url: str, model_id: str) -> None:
    """The model layer's HTTP backend end to end against the project's own server: the same
    path construct takes in the demo, here with the local backend's answers as the reference."""
    spec = ModelSpec(provider="openai", model=model_id, base_url=base_url, supports_prefill=True,
                     sampling={"max_tokens": 6}, rate_limit={"requests_per_s": 50})
    local = build_backend(ModelSpec(provider="local", model=model_id, sampling={"max_tokens": 6}))
    requests = [ChatRequest([{"role": "user", "content": f"question {i}"}]) for i in range(4)]
    requests.append(ChatRequest([{"role": "user", "content": "go"}], prefill="Answer:"))
    requests.append(ChatRequest([{"role": "user", "content": "x" * (MAX_POSITIONS + 100)}]))

    over_http, in_process = answer_both(spec, local, requests)
    for remote, direct in zip(over_http[:5], in_process[:5]):
        assert remote.ok and remote.texts == direct.texts  # greedy: identical through HTTP
        assert remote.prompt_tokens == direct.prompt_tokens and remote.requests == 1
    too_long = over_http[5]
    assert not too_long.ok and not too_long.retryable and too_long.retries == 0 and "HTTP 400" in too_long.error


def test_raw_text_over_http_matches_in_process(base_url: str, model_id: str) -> None:
    """Raw text through the HTTP backend (the completions API) and the local backend on the same
    folder: the same greedy answers, token counts and logprobs; a chat in the same batch."""
    spec = ModelSpec(provider="openai", model=model_id, base_url=base_url, sampling={"max_tokens": 6})
    local = build_backend(ModelSpec(provider="local", model=model_id, sampling={"max_tokens": 6}))
    requests = [ChatRequest([], prompt=OptimizerTemplate().wrap(None, f"question {i}")) for i in range(3)]
    requests.append(ChatRequest([], prompt=PROMPT, add_special_tokens=False, logprobs=True, top_logprobs=2))
    requests.append(ChatRequest(USER))
    requests.append(ChatRequest([], prompt="x" * (MAX_POSITIONS + 100)))

    over_http, in_process = answer_both(spec, local, requests)
    for remote, direct in zip(over_http[:5], in_process[:5]):
        assert remote.ok and remote.texts == direct.texts  # greedy: identical through HTTP
        assert remote.prompt_tokens == direct.prompt_tokens and remote.requests == 1
    [remote_tokens], [direct_tokens] = over_http[3].logprobs, in_process[3].logprobs
    assert [t.token for t in remote_tokens] == [t.token for t in direct_tokens]
    for remote, direct in zip(remote_tokens, direct_tokens):
        assert remote.logprob == pytest.approx(direct.logprob, abs=1e-4)
        assert {token for token, _ in remote.top} == {token for token, _ in direct.top}
    too_long = over_http[5]
    assert not too_long.ok and not too_long.retryable and "HTTP 400" in too_long.error
