"""The local backend: a Hugging Face causal LM run in-process with transformers.

One model per actor. `generate` blocks and keeps the cores busy, so it runs in a worker thread
(the actor's event loop stays responsive) and only one batch at a time per backend.
Sampling comes only from the spec and the request (never from the model's generation_config),
so the spec's fingerprint fully describes what produced an output.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
)
from transformers.generation.streamers import BaseStreamer

from bpo_ray.errors import ConfigError, ModelUnavailableError
from bpo_ray.models.base import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    Message,
    TokenLogprob,
)
from bpo_ray.models.embedded import resolve_model_path
from bpo_ray.models.spec import ModelSpec, Sampling

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def render_prompt(tokenizer: Any, messages: list[Message], prefill: str | None = None) -> str:
    """The chat template applied to `messages`, ending where the model should write.

    With a prefill the assistant turn is left open right after the prefill text, so the model
    continues it instead of starting a new turn.
    """
    if prefill:
        return tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": prefill}], tokenize=False,
            continue_final_message=True, add_generation_prompt=False,
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_request(tokenizer: Any, request: ChatRequest) -> list[int]:
    """The prompt's token ids, as every in-process backend feeds them to its model. A raw
    prompt is encoded exactly as training encoded it (OptimizerTemplate.encode); a chat template
    writes its own specials, so none are added."""
    if request.prompt is not None:
        return tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"]
    prompt = render_prompt(tokenizer, request.messages, request.prefill)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def refuse_prompt(ids: list[int], max_positions: int | None) -> ChatResult | None:
    """The failed result for a prompt the model cannot continue, else None."""
    if not ids:  # generation needs at least one token to continue
        return ChatResult(error="empty prompt: no tokens to continue")
    # Dropping the start of a chat would silently change the task: refuse instead.
    if max_positions is not None and len(ids) >= max_positions:
        return ChatResult(error=f"prompt too long: {len(ids)} tokens > limit {max_positions - 1}",
                          prompt_tokens=len(ids))
    return None


@dataclass
class _Job:
    """One valid request on its way through generate."""

    index: int
    request: ChatRequest
    sampling: Sampling
    input_ids: list[int]


class TransformersBackend(ChatBackend):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model_name = spec.model
        path = resolve_model_path(spec.model)
        self.device = _pick_device(spec.device)
        dtype = _pick_dtype(spec.dtype, self.device)
        self.tokenizer, self.model = _load(path, dtype)
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_positions = _max_positions(self.model, self.tokenizer)
        self.eos_ids = _eos_ids(self.model.generation_config.eos_token_id, self.tokenizer)
        # generate fills unset options from the model's generation_config (e.g. a checkpoint's
        # repetition_penalty); keep only its token ids so the spec alone decides sampling.
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.model.generation_config.bos_token_id,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id,
        )
        self._lock = asyncio.Lock()

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        async with self._lock:
            return await asyncio.to_thread(self._answer_all, requests)

    # --- everything below runs in the worker thread ---

    def _answer_all(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple[str, bool], list[_Job]] = {}
        for i, request in enumerate(requests):
            try:
                job = self._prepare(i, request)
            except Exception as e:  # bad sampling override, template error, …
                results[i] = _error(e)
                continue
            if isinstance(job, ChatResult):
                results[i] = job
                continue
            key = (job.sampling.model_dump_json(), request.logprobs)
            groups.setdefault(key, []).append(job)

        # Grouping first, then cutting into micro-batches, keeps batches as full as possible.
        size = self.spec.batch_size
        for jobs in groups.values():
            # A batch is left-padded to its longest prompt: sorted by length, each micro-batch
            # holds prompts of similar length, so short prompts do not pay for a long one.
            jobs.sort(key=lambda job: len(job.input_ids))
            for start in range(0, len(jobs), size):
                chunk = jobs[start : start + size]
                try:
                    for job, result in zip(chunk, self._generate(chunk)):
                        results[job.index] = result
                except Exception as e:  # out of memory, a device error: worth another try later
                    for job in chunk:
                        results[job.index] = _error(e, retryable=True)
        return [r if r is not None else _error(RuntimeError("no result")) for r in results]

    def _prepare(self, index: int, request: ChatRequest) -> _Job | ChatResult:
        sampling = Sampling.model_validate({**self.spec.sampling.model_dump(), **request.sampling})
        ids = encode_request(self.tokenizer, request)
        refused = refuse_prompt(ids, self.max_positions)
        return refused if refused is not None else _Job(index, request, sampling, ids)

    def _generate(self, jobs: list[_Job]) -> list[ChatResult]:
        s = jobs[0].sampling
        want_logprobs = jobs[0].request.logprobs
        batch = self.tokenizer.pad({"input_ids": [j.input_ids for j in jobs]}, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        prompt_len = batch["input_ids"].shape[1]
        stops = [x for x in s.stop or [] if x]  # an empty stop string would end every reply at once
        sample = s.temperature > 0  # temperature 0 means greedy, as in the OpenAI API
        copies = s.n if sample else 1  # greedy choices are all the same: compute one, repeat it
        max_new = s.max_tokens
        if self.max_positions is not None:  # leave room in the position table
            max_new = min(max_new, self.max_positions - max(len(j.input_ids) for j in jobs))

        config = GenerationConfig(
            max_new_tokens=max_new, num_return_sequences=copies,
            do_sample=sample,
            temperature=s.temperature if sample else None,
            top_p=s.top_p if sample else None,
            top_k=0 if sample else None,  # 0 turns it off; None would mean the default 50
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=stops or None,
            return_dict_in_generate=True, output_logits=want_logprobs,
        )
        if s.seed is not None:
            torch.manual_seed(s.seed)
        streamer = None
        if any(job.request.on_text for job in jobs):
            streamer = _TextStreamer(self, jobs, copies=copies, n=s.n, stops=stops)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**batch, generation_config=config, tokenizer=self.tokenizer,
                                      streamer=streamer)
        latency = time.perf_counter() - started

        new_tokens = out.sequences[:, prompt_len:].tolist()
        logits = torch.stack(out.logits, dim=1) if want_logprobs else None  # (rows, steps, vocab)
        results = []
        for j, job in enumerate(jobs):
            result = ChatResult(prompt_tokens=len(job.input_ids), latency_s=latency,
                                logprobs=[] if want_logprobs else None)
            for c in range(s.n):
                row = j * copies + c % copies  # generate repeats each prompt in place
                text, reason, used = self._finish(new_tokens[row], stops)
                result.texts.append(text)
                result.finish_reasons.append(reason)
                result.completion_tokens += used
                if logits is not None:
                    result.logprobs.append(self._logprobs(
                        logits[row, :used], new_tokens[row][:used], job.request.top_logprobs))
            results.append(result)
        return results

    def _finish(self, tokens: list[int], stop: list[str]) -> tuple[str, str, int]:
        """(text, finish_reason, tokens used) for one generated row.

        Finished rows are padded, and the pad may equal the EOS, so "end" is the first EOS/pad;
        whether that was a real EOS or padding after a stop string is told by the text.
        """
        pad = self.tokenizer.pad_token_id
        end = next((k for k, t in enumerate(tokens) if t in self.eos_ids or t == pad), len(tokens))
        text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        cut = min((p for p in (text.find(x) for x in stop) if p >= 0), default=-1)
        if cut >= 0:
            return text[:cut], "stop", end
        if end < len(tokens):
            return text, "stop", end + (tokens[end] in self.eos_ids)
        return text, "length", end

    def _logprobs(self, logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
        logp = torch.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(-1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
        if top > 0:
            top_vals, top_ids = logp.topk(top, dim=-1)
            tops = [list(zip(map(self._token_text, ids), vals))
                    for ids, vals in zip(top_ids.tolist(), top_vals.tolist())]
        else:
            tops = [[] for _ in tokens]
        return [TokenLogprob(self._token_text(t), lp, alt) for t, lp, alt in zip(tokens, chosen, tops)]

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class _TextStreamer(BaseStreamer):
    """Hands each streaming request its new text after every decoding step of a batch.

    Text is sent only once it is final: a stop string may still begin in the last characters
    (held back), and a trailing U+FFFD is half a character still being decoded. So what was sent
    is always a prefix of the result's text, and the rest follows with the result.
    """

    def __init__(self, backend: TransformersBackend, jobs: list[_Job], *, copies: int, n: int,
                 stops: list[str]) -> None:
        self.backend = backend
        self.hold = max((len(x) for x in stops), default=1) - 1
        self.stops = stops
        # Generated row -> the (request, choice) pairs it answers: rows are prompts repeated
        # `copies` times in place; greedy choices (copies 1) all read the one row.
        self.readers: dict[int, list[tuple[ChatRequest, int]]] = {}
        for j, job in enumerate(jobs):
            if job.request.on_text is not None:
                for c in range(n):
                    self.readers.setdefault(j * copies + c % copies, []).append((job.request, c))
        self.tokens: dict[int, list[int]] = {row: [] for row in self.readers}
        self.sent: dict[int, int] = dict.fromkeys(self.readers, 0)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompts
            self.prompt_seen = True
            return
        step = value.tolist()
        ends = self.backend.eos_ids | {self.backend.tokenizer.pad_token_id}
        for row in list(self.tokens):
            token = step[row]
            if token in ends:  # finished: the result says the rest
                del self.tokens[row]
                continue
            self.tokens[row].append(token)
            text = self.backend.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if any(x in text for x in self.stops):
                del self.tokens[row]
                continue
            ready = len(text[: max(0, len(text) - self.hold)].rstrip("\ufffd"))
            if ready > self.sent[row]:
                for request, choice in self.readers[row]:
                    try:
                        request.on_text(choice, text[self.sent[row]:ready])
                    except Exception:  # a reader's failure must not end the batch's generate
                        log.warning("a streaming reader failed", exc_info=True)
                self.sent[row] = ready

    def end(self) -> None:
        return None


def _pick_device(device: str) -> torch.device:
    return torch.device(choose_device(device, cuda_available=torch.cuda.is_available(),
                                      ray_gpu_ids=_ray_gpu_ids()))


def choose_device(requested: str, *, cuda_available: bool, ray_gpu_ids: list | None) -> str:
    """'cuda' or 'cpu' for a local model.

    Inside a Ray actor (`ray_gpu_ids` is a list), 'auto' means the GPU Ray assigned: Ray does
    not hide the node's GPUs from an actor that reserved none, and every such actor would
    otherwise load onto cuda:0 beside the ones that did reserve it.
    """
    if requested == "cuda" and not cuda_available:
        raise ConfigError("model.device: 'cuda' requested but no CUDA device is visible")
    if requested == "auto":
        assigned = ray_gpu_ids is None or len(ray_gpu_ids) > 0
        return "cuda" if cuda_available and assigned else "cpu"
    return requested


def _ray_gpu_ids() -> list | None:
    """The GPUs Ray assigned to this worker, or None outside a Ray worker."""
    try:
        import ray

        if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
            return None
        return list(ray.get_gpu_ids())
    except Exception:
        return None


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # bf16 halves GPU memory; on CPU it is emulated and slow
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def model_source(path: str) -> str:
    """The folder (or HF id in the local cache) to load from; raises ModelUnavailableError for
    a path that does not exist, so the job stops instead of rejecting every row."""
    folder = Path(path).expanduser()
    looks_like_path = folder.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if not folder.is_dir() and (looks_like_path or folder.exists()):
        raise ModelUnavailableError(f"model.model: model folder not found: {folder.absolute()}")
    return str(folder) if folder.is_dir() else path  # otherwise an HF id, from the local HF cache


def check_loadable(path: str) -> None:
    """What loading needs, without the weights: config, tokenizer, a weights file. Cheap enough
    for the driver to run once before a job starts its model actors."""
    source = model_source(path)
    try:
        AutoConfig.from_pretrained(source)
        AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise _unloadable(path, e) from None
    folder = Path(source)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelUnavailableError(f"model.model: {folder} has no weights (*.safetensors or *.bin)")


def _load(path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    source = model_source(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as e:  # ValueError: not even a valid hub id
        raise _unloadable(path, e) from e
    return tokenizer, model


def _unloadable(path: str, e: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(f"model.model: cannot load {path!r} (not a model folder, and not in "
                                 f"the local Hugging Face cache): {_first_line(e)}")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _max_positions(model: Any, tokenizer: Any) -> int | None:
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit is None and tokenizer.model_max_length < 1_000_000:  # tokenizers say 1e30 for "unknown"
        limit = tokenizer.model_max_length
    return limit


def checkpoint_eos_ids(source: str, tokenizer: Any) -> set[int]:
    """The end-of-sequence ids the transformers backend stops on, read without loading weights
    (generate reads them from the generation config, else the model config)."""
    try:
        config = GenerationConfig.from_pretrained(source)
    except OSError:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(source))
    return _eos_ids(config.eos_token_id, tokenizer)


def _eos_ids(eos: int | list[int] | None, tokenizer: Any) -> set[int]:
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _error(e: Exception, *, retryable: bool = False) -> ChatResult:
    return ChatResult(error=f"{type(e).__name__}: {e}", retryable=retryable)
