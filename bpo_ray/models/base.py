"""One interface for every backend: a batch of chat requests in, one result per request out.

A backend never raises for a single failed request: the result carries `error` and whether
it is worth retrying later, so stages can turn it into a rejected row with its reason.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass
class ChatRequest:
    """One request: a chat (`messages`) or, with `prompt` set, raw text the model continues as
    is (the completions API): an optimizer trained on a plain-text layout is fed that text."""

    messages: list[Message]
    prompt: str | None = None
    """Raw text prompt; when set, `messages` and `prefill` are ignored."""
    add_special_tokens: bool = True
    """Whether the tokenizer adds its specials (BOS) to a raw `prompt`, as vLLM and HF do for
    text; False for text that already carries them (a rendered chat template)."""
    prefill: str | None = None
    """Text the assistant turn starts with; the model continues it (the reply excludes it)."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Per-request overrides of the spec's sampling parameters."""
    logprobs: bool = False
    top_logprobs: int = 0
    on_text: Callable[[int, str], None] | None = field(default=None, repr=False, compare=False)
    """Streaming: called with (choice index, new text) as the reply is written, possibly from
    the backend's worker thread. The result still carries the whole text; a backend that cannot
    stream never calls it (bpo_ray/serve/streaming.py then sends the result in one piece)."""


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ChatResult:
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    logprobs: list[list[TokenLogprob]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    """HTTP requests sent for this result, retries included (0 for local models)."""
    retries: int = 0
    latency_s: float = 0.0
    error: str | None = None
    retryable: bool = False
    """True when the error was transient (rate limit, timeout, 5xx): a later run may succeed."""
    extra: dict = field(default_factory=dict)
    """A reply's fields beyond OpenAI's (the BPO graph's `bpo` object), from HTTP backends."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


class ChatBackend(abc.ABC):
    """A model behind `chat_batch`. One instance per actor; not shared across threads."""

    model_name: str
    continuous_batching = False
    """True for a backend that schedules requests itself (vLLM): callers send each request as it
    comes instead of gathering batches (a Serve replica skips `serve.batch`)."""

    @abc.abstractmethod
    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Answer every request; result i belongs to request i."""

    async def check_health(self) -> None:
        """Raise if the backend can no longer answer (a Serve replica is then replaced)."""
        return None

    async def aclose(self) -> None:
        return None
