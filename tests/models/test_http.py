"""The HTTP backend against real local servers: retries, timeouts, rate limits, accounting."""

from __future__ import annotations

import asyncio
import time

import pytest

from bpo_ray.models import ChatRequest, ModelSpec, build_backend
from bpo_ray.models.http import _estimate_tokens
from bpo_ray.models.ratelimit import HEADROOM, RateLimiter
from bpo_ray.testing.scripted_server import Fault, ScriptedOpenAIServer
from ports import dead_url  # tests/ is on sys.path (conftest)

HELLO = ChatRequest([{"role": "user", "content": "hello"}])
TEXT = ChatRequest([], prompt="### Prompt:\nhello there")


def spec_for(url: str, **kw) -> ModelSpec:
    base = dict(provider="openai", model="scripted", base_url=url, api_key_env="BPO_TEST_KEY",
                timeout_s=2.0, max_retries=3)
    return ModelSpec(**{**base, **kw})


def run(backend, requests):
    async def go():
        try:
            return await backend.chat_batch(requests)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def echo(body: dict) -> str:
    """The chat's last message or the raw prompt, after "ok: "."""
    return "ok: " + (body["prompt"] if "prompt" in body else body["messages"][-1]["content"])


@pytest.fixture
def server():
    with ScriptedOpenAIServer(reply_fn=echo) as srv:
        yield srv


def test_plain_completion_counts_usage(server):
    [res] = run(build_backend(spec_for(server.base_url)), [HELLO])
    assert res.ok and res.text == "ok: hello"
    assert res.requests == 1 and res.retries == 0
    assert res.prompt_tokens > 0 and res.completion_tokens > 0


def test_raw_prompt_goes_to_the_completions_api(server):
    bare = ChatRequest([], prompt="raw", add_special_tokens=False, logprobs=True, top_logprobs=2)
    text, chat, raw = run(build_backend(spec_for(server.base_url)), [TEXT, HELLO, bare])
    assert text.ok and text.text == "ok: ### Prompt:\nhello there" and text.requests == 1
    assert (text.prompt_tokens, text.completion_tokens) == (4, 5)  # the scripted server counts words
    assert chat.ok and chat.text == "ok: hello"
    assert raw.ok and raw.text == "ok: raw"
    bodies = {body.get("prompt"): body for body in server.stats.bodies}
    assert "messages" not in bodies[TEXT.prompt] and "add_special_tokens" not in bodies[TEXT.prompt]
    # vLLM's extension for text that carries its own specials; legacy logprobs: how many alternatives
    assert bodies["raw"]["add_special_tokens"] is False and bodies["raw"]["logprobs"] == 2


def test_raw_prompt_is_retried_like_a_chat(server):
    server.push(Fault(status=429, retry_after=0.1), Fault(status=503), Fault(malformed=True))
    [res] = run(build_backend(spec_for(server.base_url)), [TEXT])
    assert res.ok and res.text == "ok: ### Prompt:\nhello there"
    assert res.retries == 3 and res.requests == 4
    assert server.stats.by_status == {429: 1, 503: 1, 200: 2}  # the malformed reply was a 200


def test_token_estimate_counts_a_raw_prompt():
    assert _estimate_tokens(ChatRequest([], prompt="x" * 400), 10) == 110
    assert _estimate_tokens(ChatRequest([{"role": "user", "content": "x" * 40}], prefill="y" * 4), 10) == 21


def test_streamed_request_hands_over_text_as_it_arrives(server):
    pieces: list[tuple[int, str]] = []
    ask = ChatRequest([{"role": "user", "content": "tell me three things"}], sampling={"n": 2},
                      on_text=lambda choice, text: pieces.append((choice, text)))
    [res] = run(build_backend(spec_for(server.base_url)), [ask])
    assert server.stats.bodies[-1]["stream"] is True
    assert res.ok and res.texts == ["ok: tell me three things"] * 2 and res.finish_reasons == ["stop", "stop"]
    for choice in (0, 1):  # word by word, as the server streamed it
        mine = [text for c, text in pieces if c == choice]
        assert "".join(mine) == res.texts[choice] and len(mine) == 5
    assert (res.prompt_tokens, res.completion_tokens) == (4, 10)  # from the stream's usage chunk


def test_a_streamed_request_is_retried_before_any_text(server):
    server.push(Fault(status=503))
    pieces: list[str] = []
    [res] = run(build_backend(spec_for(server.base_url)),
                [ChatRequest([{"role": "user", "content": "hi"}], on_text=lambda _, text: pieces.append(text))])
    assert res.ok and res.retries == 1 and "".join(pieces) == res.text == "ok: hi"


def test_429_with_retry_after_is_honoured(server):
    server.push(Fault(status=429, retry_after=0.4))
    started = time.monotonic()
    [res] = run(build_backend(spec_for(server.base_url)), [HELLO])
    assert res.ok and res.retries == 1 and res.requests == 2
    assert time.monotonic() - started >= 0.4  # waited as told, not the default backoff
    assert server.stats.by_status[429] == 1 and server.stats.by_status[200] == 1


def test_500_then_success(server):
    server.push(Fault(status=500), Fault(status=503))
    [res] = run(build_backend(spec_for(server.base_url)), [HELLO])
    assert res.ok and res.retries == 2


def test_stall_past_timeout_is_retried(server):
    server.push(Fault(stall_s=3.0))
    [res] = run(build_backend(spec_for(server.base_url, timeout_s=0.5)), [HELLO])
    assert res.ok and res.retries == 1


def test_malformed_body_is_retried(server):
    server.push(Fault(malformed=True))
    [res] = run(build_backend(spec_for(server.base_url)), [HELLO])
    assert res.ok and res.retries == 1 and res.text == "ok: hello"


def test_client_error_is_not_retried(server):
    server.push(Fault(status=400))
    [res] = run(build_backend(spec_for(server.base_url)), [HELLO])
    assert not res.ok and not res.retryable and res.retries == 0
    assert "HTTP 400" in res.error


def test_retries_exhausted_gives_retryable_error(server):
    server.push(*[Fault(status=500)] * 3)
    [res] = run(build_backend(spec_for(server.base_url, max_retries=2)), [HELLO])
    assert not res.ok and res.retryable and res.requests == 3 and res.retries == 2


def test_dead_api_is_a_result_not_a_crash():
    [res] = run(build_backend(spec_for(dead_url(), max_retries=1)), [HELLO])
    assert not res.ok and res.retryable and res.error.startswith("connection error")


def test_batch_keeps_order_and_bounds_concurrency():
    with ScriptedOpenAIServer(reply_fn=lambda b: b["messages"][-1]["content"], latency_s=0.2) as srv:
        backend = build_backend(spec_for(srv.base_url, concurrency=4))
        reqs = [ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(12)]
        started = time.monotonic()
        results = run(backend, reqs)
        elapsed = time.monotonic() - started
    assert [r.text for r in results] == [f"q{i}" for i in range(12)]
    assert elapsed >= 0.6 - 0.05  # 12 requests, 4 at a time, 0.2 s each: at least 3 waves


def test_connection_pool_is_sized_to_the_requests_in_flight():
    """120 in flight, two waves: every connection of the first wave is kept and reused (the
    client's default pool keeps 100, and would open 20 more for the second wave)."""
    with ScriptedOpenAIServer(reply_fn=lambda b: "ok", latency_s=0.2) as srv:
        backend = build_backend(spec_for(srv.base_url, concurrency=120))
        reqs = [ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(120)]

        async def two_waves():
            try:
                for _ in range(2):
                    assert all(r.ok for r in await backend.chat_batch(reqs))
            finally:
                await backend.aclose()

        asyncio.run(two_waves())
        assert srv.stats.requests == 240
        assert len(srv.stats.peers) <= 120


def test_prefill_goes_as_continue_final_message(server):
    backend = build_backend(spec_for(server.base_url, supports_prefill=True))
    run(backend, [ChatRequest([{"role": "user", "content": "x"}], prefill="Answer:")])
    body = server.stats.bodies[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "Answer:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_missing_api_key_names_the_variable(monkeypatch):
    from bpo_ray.errors import ConfigError

    monkeypatch.delenv("SOME_UNSET_KEY", raising=False)
    spec = ModelSpec(provider="openai", model="m", base_url="https://api.example.invalid/v1", api_key_env="SOME_UNSET_KEY")
    with pytest.raises(ConfigError, match="SOME_UNSET_KEY"):
        spec.api_key()


def test_rate_limiter_spaces_requests_evenly():
    limiter = RateLimiter(requests_per_s=50)
    now = time.time()
    waits = [limiter.reserve() - now for _ in range(10)]
    # The 10th request may go no earlier than 9 intervals of 20 ms after the first.
    assert waits[0] == pytest.approx(0.0, abs=0.005)
    assert waits[-1] == pytest.approx(9 / (50 * HEADROOM), abs=0.01)


def test_client_rate_limit_avoids_server_429s():
    with ScriptedOpenAIServer(reply_fn=lambda b: "x", rate_limit_rps=10) as srv:
        backend = build_backend(spec_for(srv.base_url, concurrency=32, rate_limit={"requests_per_s": 10}))
        results = run(backend, [HELLO] * 15)
        rate = srv.ok_rate()
        by_status = dict(srv.stats.by_status)
    assert all(r.ok for r in results)
    # Unpaced, 5 of these 15 would bounce; paced, at most the first connection's set-up skew
    # (request 1 arrives late, so request 11 can share its window) costs one retry.
    assert by_status.get(429, 0) <= 1
    assert 8.0 <= rate <= 10.5
