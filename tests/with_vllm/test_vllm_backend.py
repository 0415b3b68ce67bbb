"""The vLLM backend on the embedded model (vLLM's CPU build, in .venv-vllm: scripts/test.sh),
checked against the transformers backend on the same prompts."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from bpo_ray.models import ChatRequest, ModelSpec, build_backend

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CHATS = [
    "What is the capital of France?",
    "Write a haiku about owls.",
    "Explain gravity to a child in three sentences.",
    "List three uses of a paperclip, one per line, and nothing else. Be brief and concrete.",
]
RAW = "Instruction: rewrite this request so it is clearer.\nRequest: tell me about dogs\nRewritten:"
MAX_TOKENS = 40


# One event loop for the module: the engine's output handler lives on the loop it first ran on
# (as in a Ray actor or a Serve replica, which keep one loop).
_LOOP = asyncio.new_event_loop()


def run(coro):
    return _LOOP.run_until_complete(coro)


@pytest.fixture(scope="module")
def backends(vllm_spec):
    """(vllm, transformers) on the embedded model, greedy; built once for the module."""
    vllm_backend = build_backend(vllm_spec(max_tokens=MAX_TOKENS))
    local = build_backend(ModelSpec(provider="local", model="embedded",
                                    sampling={"temperature": 0, "max_tokens": MAX_TOKENS}))
    yield vllm_backend, local
    run(vllm_backend.aclose())


def requests() -> list[ChatRequest]:
    """Chat prompts, a pre-filled assistant turn, and raw text with and without BOS."""
    return [
        *(ChatRequest(messages=[{"role": "user", "content": c}]) for c in CHATS),
        ChatRequest(messages=[{"role": "user", "content": CHATS[1]}], prefill="Here is a haiku:"),
        ChatRequest(messages=[], prompt=RAW),
        ChatRequest(messages=[], prompt=RAW, add_special_tokens=False),
    ]


def test_greedy_matches_transformers_token_for_token(backends):
    vllm_backend, local = backends
    assert vllm_backend.continuous_batching and not local.continuous_batching
    # One request at a time through transformers: left padding in a batch may move fp32 sums.
    want = [run(local.chat_batch([r]))[0] for r in requests()]
    got = run(vllm_backend.chat_batch(requests()))
    for w, g in zip(want, got):
        assert g.ok, g.error
        assert g.texts == w.texts
        assert g.finish_reasons == w.finish_reasons
        assert (g.prompt_tokens, g.completion_tokens) == (w.prompt_tokens, w.completion_tokens)
    # The prompts really differ in what the model saw and wrote (the check can fail).
    assert len({g.text for g in got}) >= 5
    assert {"stop", "length"} <= {g.finish_reasons[0] for g in got}


def test_logprobs_match_transformers(backends):
    vllm_backend, local = backends
    request = lambda: ChatRequest(messages=[{"role": "user", "content": CHATS[0]}], logprobs=True,  # noqa: E731
                                  top_logprobs=3, sampling={"max_tokens": 6})
    [w] = run(local.chat_batch([request()]))
    [g] = run(vllm_backend.chat_batch([request()]))
    assert [t.token for t in g.logprobs[0]] == [t.token for t in w.logprobs[0]]
    for gt, wt in zip(g.logprobs[0], w.logprobs[0]):
        assert gt.logprob == pytest.approx(wt.logprob, abs=1e-3)
        assert [tok for tok, _ in gt.top] == [tok for tok, _ in wt.top]
        assert len(gt.top) == 3 and gt.top[0][1] >= gt.top[1][1] >= gt.top[2][1]
    assert all(lp.logprob <= 0 and math.isfinite(lp.logprob) for lp in g.logprobs[0])


def test_n_seed_and_stop(backends):
    vllm_backend, _ = backends
    sampled = {"temperature": 1.0, "n": 3, "seed": 7, "max_tokens": 24}
    ask = lambda **s: ChatRequest(messages=[{"role": "user", "content": CHATS[2]}], sampling=s)  # noqa: E731
    first, again, other, greedy = run(vllm_backend.chat_batch(
        [ask(**sampled), ask(**sampled), ask(**{**sampled, "seed": 8}), ask(n=2)]))
    assert len(first.texts) == 3 and len(set(first.texts)) > 1  # n choices, sampled apart
    assert first.texts == again.texts  # the seed makes a sample repeatable
    assert other.texts != first.texts
    assert len(greedy.texts) == 2 and greedy.texts[0] == greedy.texts[1]
    assert greedy.completion_tokens == 2 * (greedy.completion_tokens // 2)
    # A stop string cuts the reply before it, as in the OpenAI API.
    [plain] = run(vllm_backend.chat_batch([ask()]))
    word = plain.text.split()[3]
    [cut] = run(vllm_backend.chat_batch([ask(stop=[word])]))
    assert cut.finish_reasons == ["stop"] and word not in cut.text
    assert plain.text.startswith(cut.text) and len(cut.text) < len(plain.text)


def test_streaming_pieces_add_up_to_the_reply(backends):
    vllm_backend, _ = backends
    pieces: list[tuple[int, str]] = []
    request = ChatRequest(messages=[{"role": "user", "content": CHATS[2]}],
                          on_text=lambda c, text: pieces.append((c, text)))
    [streamed, whole] = run(vllm_backend.chat_batch(
        [request, ChatRequest(messages=[{"role": "user", "content": CHATS[2]}])]))
    assert streamed.text == whole.text
    assert len(pieces) >= streamed.completion_tokens // 2
    assert "".join(text for _, text in pieces) == streamed.text


def test_bad_requests_fail_alone(backends, vllm_spec):
    vllm_backend, _ = backends
    huge = "word " * 9000  # over the embedded model's 8192 positions
    too_long, bad_sampling, empty, good = run(vllm_backend.chat_batch([
        ChatRequest(messages=[{"role": "user", "content": huge}]),
        ChatRequest(messages=[{"role": "user", "content": "hi"}], sampling={"temperature": 9}),
        ChatRequest(messages=[], prompt="", add_special_tokens=False),
        ChatRequest(messages=[{"role": "user", "content": CHATS[0]}]),
    ]))
    assert too_long.error.startswith("prompt too long") and not too_long.retryable
    assert "temperature" in bad_sampling.error and not bad_sampling.retryable
    assert empty.error.startswith("empty prompt")
    assert good.ok and "Paris" in good.text


def test_missing_model_is_a_clear_error(tmp_path, vllm_spec):
    from bpo_ray.errors import ModelUnavailableError
    from bpo_ray.models import check_model

    spec = vllm_spec(model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelUnavailableError, match="model folder not found"):
        check_model(spec)


def test_a_dead_engine_fails_its_health_check_and_its_requests(backends):
    """Last in the module: it kills the module's engine. A Serve replica's health check calls
    `check_health`, so Serve replaces a replica whose engine died; stage rows come back
    retryable for the next run."""
    import psutil

    vllm_backend, _ = backends
    run(vllm_backend.check_health())  # alive
    cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline() + [p.name()])]
    assert cores, "no engine core process found"
    for process in cores:
        process.kill()
    psutil.wait_procs(cores, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the engine notices its core is gone within a moment
        try:
            run(vllm_backend.check_health())
        except Exception:
            break
        time.sleep(0.5)
    with pytest.raises(Exception):
        run(vllm_backend.check_health())
    [result] = run(vllm_backend.chat_batch([ChatRequest(messages=[{"role": "user", "content": CHATS[0]}])]))
    assert not result.ok and result.retryable
