"""Tests for the scripted OpenAI-compatible server used in fault-injection tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import aiohttp
import openai
import pytest

from bpo_ray.testing.scripted_server import Fault, ScriptedOpenAIServer

MESSAGES = [
    {"role": "system", "content": "You are a prompt optimizer."},
    {"role": "user", "content": "make this prompt better"},
]


@pytest.fixture
def make_server() -> Iterator[Callable[..., ScriptedOpenAIServer]]:
    started: list[ScriptedOpenAIServer] = []

    def _make(**kwargs: object) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield _make
    for server in started:
        server.stop()


def _client(server: ScriptedOpenAIServer, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=timeout)


def _post(server: ScriptedOpenAIServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def _fire(server: ScriptedOpenAIServer, send_at: list[float]) -> list[tuple[int, str | None]]:
    """POST one request at each offset (seconds from now); return (status, Retry-After) each."""
    body = {"model": "m", "messages": MESSAGES}
    # limit=0: no client-side connection cap, so every request is really in flight at once.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        t0 = time.monotonic()

        async def one(offset: float) -> tuple[int, str | None]:
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            async with session.post(f"{server.base_url}/chat/completions", json=body) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        return await asyncio.gather(*(one(o) for o in send_at))


def test_models_list(make_server) -> None:
    server = make_server(model="bpo-7b")
    models = _client(server).models.list()
    assert [m.id for m in models.data] == ["bpo-7b"]
    assert models.data[0].owned_by == "bpo-ray-test"


def test_completion_with_n_choices_and_default_content(make_server) -> None:
    server = make_server()
    resp = _client(server).chat.completions.create(model="req-model", messages=MESSAGES, n=2)
    assert resp.object == "chat.completion"
    assert resp.model == "req-model"
    assert [c.index for c in resp.choices] == [0, 1]
    for choice in resp.choices:
        assert choice.message.role == "assistant"
        assert choice.message.content == "Optimized Instruction: make this prompt better"
        assert choice.finish_reason == "stop"
    # prompt: 5 + 4 words; completion: 6 words per choice.
    assert resp.usage.prompt_tokens == 9
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == 21
    assert server.stats.requests == 1
    assert server.stats.by_status == {200: 1}
    assert server.stats.bodies[-1]["n"] == 2


def test_reply_fn_and_scripted_content(make_server) -> None:
    server = make_server(reply_fn=lambda body: f"echo {len(body['messages'])}")
    client = _client(server)
    server.push(Fault(content="scripted text"))
    first = client.chat.completions.create(model="m", messages=MESSAGES)
    second = client.chat.completions.create(model="m", messages=MESSAGES)
    assert first.choices[0].message.content == "scripted text"
    assert second.choices[0].message.content == "echo 2"


def test_text_completion_route_shares_the_script(make_server) -> None:
    server = make_server(script=[Fault(status=429, retry_after=0.5)])
    client = _client(server)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="m", prompt="make this prompt better")
    resp = client.completions.create(model="req-model", prompt="make this prompt better", n=2)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.model == "req-model"
    assert [c.index for c in resp.choices] == [0, 1]
    for choice in resp.choices:
        assert choice.text == "Optimized Instruction: make this prompt better"
        assert choice.finish_reason == "stop" and choice.logprobs is None
    # prompt: 4 words; completion: 6 words per choice.
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 12)
    assert server.stats.requests == 2 and server.stats.by_status == {429: 1, 200: 1}
    assert server.stats.bodies[-1]["prompt"] == "make this prompt better"


def test_scripted_429_then_success(make_server) -> None:
    server = make_server(script=[Fault(status=429, retry_after=1.5)])
    client = _client(server)
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(model="m", messages=MESSAGES)
    err = excinfo.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "1.5"
    error = err.response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["type"] == "rate_limit_exceeded"

    resp = client.chat.completions.create(model="m", messages=MESSAGES)
    assert resp.choices[0].message.content.startswith("Optimized Instruction:")
    assert server.stats.by_status == {429: 1, 200: 1}


def test_scripted_500_and_fifo_order(make_server) -> None:
    server = make_server()
    server.push(Fault(status=500), Fault(status=503))
    client = _client(server)
    with pytest.raises(openai.InternalServerError) as first:
        client.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError) as second:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert (first.value.status_code, second.value.status_code) == (500, 503)
    assert first.value.response.json()["error"]["type"] == "server_error"
    assert "retry-after" not in first.value.response.headers
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert server.stats.by_status == {500: 1, 503: 1, 200: 1}


def test_malformed_body_makes_client_raise(make_server) -> None:
    server = make_server(script=[Fault(malformed=True)])
    status, _, raw = _post(server, json.dumps({"model": "m", "messages": MESSAGES}).encode())
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)

    server.push(Fault(malformed=True))
    with pytest.raises(Exception) as excinfo:
        _client(server).chat.completions.create(model="m", messages=MESSAGES)
    assert not isinstance(excinfo.value, openai.APIStatusError)


def test_bad_json_request_gets_400_and_keeps_script(make_server) -> None:
    server = make_server(script=[Fault(content="kept")])
    status, _, raw = _post(server, b"{not json")
    assert status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    resp = _client(server).chat.completions.create(model="m", messages=MESSAGES)
    assert resp.choices[0].message.content == "kept"


def test_stall_times_out_client_then_server_answers(make_server) -> None:
    server = make_server(script=[Fault(stall_s=0.8), Fault(stall_s=0.4)])
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _client(server, timeout=0.3).chat.completions.create(model="m", messages=MESSAGES)
    assert time.monotonic() - t0 < 0.7

    # A patient client gets the normal answer once the stall is over.
    t0 = time.monotonic()
    resp = _client(server, timeout=5).chat.completions.create(model="m", messages=MESSAGES)
    assert time.monotonic() - t0 >= 0.4
    assert resp.choices[0].message.content.startswith("Optimized Instruction:")

    # The timed-out request is still answered (200) by the server after its stall.
    deadline = time.monotonic() + 2
    while server.stats.by_status.get(200, 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stats.by_status == {200: 2}


def test_rate_limit_burst_admits_exactly_floor_rps(make_server) -> None:
    server = make_server(rate_limit_rps=10.9)
    t0 = time.monotonic()
    results = asyncio.run(_fire(server, [0.0] * 30))
    assert time.monotonic() - t0 < 1.0  # all within the first window
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20
    for status, retry_after in results:
        if status == 429:
            assert retry_after is not None and 0 < float(retry_after) <= 1.0
        else:
            assert retry_after is None
    assert server.stats.requests == 30
    assert server.stats.by_status == {200: 10, 429: 20}


def test_rate_limit_sliding_window_frees_slots(make_server) -> None:
    server = make_server(rate_limit_rps=10)
    # 20 req/s for 1.5 s: 10 admitted in [0, 0.5), the rest refused until slots free from 1.0 on.
    results = asyncio.run(_fire(server, [i * 0.05 for i in range(30)]))
    oks = [s for s, _ in results].count(200)
    assert 17 <= oks <= 20
    ts = server.stats.ok_timestamps
    # Never more than 10 replies inside one window (0.95 s leaves room for reply jitter).
    assert max(sum(1 for t in ts if start <= t < start + 0.95) for start in ts) == 10


def test_ok_rate_with_latency(make_server) -> None:
    server = make_server(latency_s=0.3, rate_limit_rps=40)
    t0 = time.monotonic()
    # 20 req/s open loop for 1 s, under the limit: every request admitted, each waits the latency.
    results = asyncio.run(_fire(server, [i * 0.05 for i in range(20)]))
    assert [s for s, _ in results] == [200] * 20
    assert server.stats.ok_timestamps[0] - t0 >= 0.3
    assert 17 <= server.ok_rate() <= 23


def test_concurrent_in_flight_requests(make_server) -> None:
    server = make_server(latency_s=0.5)
    t0 = time.monotonic()
    results = asyncio.run(_fire(server, [0.0] * 300))
    elapsed = time.monotonic() - t0
    assert [s for s, _ in results] == [200] * 300
    # Serialised handling would take 300 * 0.5 s; ~0.8 s here, with headroom for a busy 2-core box.
    assert elapsed < 2.5


def test_stop_releases_port_and_is_idempotent() -> None:
    server = ScriptedOpenAIServer()
    assert server.ok_rate() == 0.0
    with server:
        port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
        assert port > 0
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
