"""JudgeStage: a judge model compares the answers to a row's original and optimized prompt.

One row is one pair in one order (`order`: which answer is shown first, as A). The judge sees
the user's question (prompt + context) and the two answers, never the optimized prompt. A reply
without a verdict gets one repair round (the conversation plus a short request for the verdict
alone); a reply still without one is recorded as `unparsed`, which the statistics report and
never count as a win or a loss. In logprobs mode the judge is asked for the verdict alone and
P(A/B/C) at the verdict token decides, with no free text to parse.
"""

from __future__ import annotations

from typing import Any

from bpo_ray.evaluate.budget import BUDGET_REASON
from bpo_ray.evaluate.judge_prompts import JudgePrompt
from bpo_ray.evaluate.verdict import best, parse_verdict, verdict_probs
from bpo_ray.models.base import ChatRequest, ChatResult
from bpo_ray.models.stage import ModelStage, Row
from bpo_ray.optimizer_template import join_context

OPTIMIZED_FIRST, ORIGINAL_FIRST = "optimized_first", "original_first"
RAW_REPLY_CHARS = 8000
VERDICT_ONLY_TOKENS = 8  # "[[A]]" and a little slack
REPAIR_TOKENS = 32
TOP_LOGPROBS = 20  # the most OpenAI's API returns
VERDICT_PREFILL = "[["


def winner_of(verdict: str | None, order: str) -> str:
    """Which answer a verdict picks: optimized, original, tie or unparsed."""
    if verdict is None:
        return "unparsed"
    if verdict == "C":
        return "tie"
    optimized_label = "A" if order == OPTIMIZED_FIRST else "B"
    return "optimized" if verdict == optimized_label else "original"


def question_of(row: Row, separator: str = "\n\n") -> str:
    return join_context(row["prompt"], row["context"], separator)


class JudgeStage(ModelStage):
    stage_name = "evaluate"
    required_columns = ("id", "prompt", "context", "order", "original_response", "optimized_response")
    output_columns = {
        "verdict": "",
        "winner": "",
        "judge_reply": "",
        "repaired": False,
        "p_optimized": 0.0,
        "p_original": 0.0,
        "p_tie": 0.0,
    }

    def __init__(self, spec: dict, *, judge_prompt: dict, verdict_mode: str = "text", repair: bool = True,
                 budget: Any = None, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.prompt = JudgePrompt.model_validate(judge_prompt)
        self.logprobs = verdict_mode == "logprobs"
        self.repair = repair
        self.budget = budget

    def _request(self, row: Row) -> ChatRequest:
        first, second = row["optimized_response"], row["original_response"]
        if row["order"] == ORIGINAL_FIRST:
            first, second = second, first
        messages = self.prompt.messages(question_of(row), first, second, verdict_only=self.logprobs)
        if self.logprobs:
            # Where the backend continues a started reply (local models, vLLM, our server), the
            # reply starts at "[[", so the very next token is the verdict.
            prefill = VERDICT_PREFILL if getattr(self.backend, "supports_prefill", self.spec.prefill) else None
            return ChatRequest(messages, prefill=prefill, logprobs=True, top_logprobs=TOP_LOGPROBS,
                               sampling={"max_tokens": VERDICT_ONLY_TOKENS, "temperature": 0.0, "n": 1})
        return ChatRequest(messages)

    async def process_rows(self, rows: list[Row]) -> list[Row]:
        if self.budget is not None and await self.budget.left.remote() <= 0:
            return [self.reject(r, BUDGET_REASON, retryable=True) for r in rows]
        asks = [self._request(r) for r in rows]
        replies = await self.backend.chat_batch(asks)
        read = [self._read(ask, reply) if reply.ok else (None, None) for ask, reply in zip(asks, replies)]

        repairs: dict[int, tuple[ChatRequest, ChatResult]] = {}
        todo = [i for i, (reply, (verdict, _)) in enumerate(zip(replies, read)) if reply.ok and verdict is None]
        if self.repair and todo:
            follow_ups = [self._repair_request(asks[i], replies[i]) for i in todo]
            for i, ask, answer in zip(todo, follow_ups, await self.backend.chat_batch(follow_ups)):
                repairs[i] = (ask, answer)
        out = [self._finish(row, replies[i], read[i], repairs.get(i)) for i, row in enumerate(rows)]
        if self.budget is not None:
            spent = sum(r.prompt_tokens + r.completion_tokens for r in [*replies, *(a for _, a in repairs.values())])
            await self.budget.spend.remote(spent)
        return out

    def _read(self, ask: ChatRequest, reply: ChatResult) -> tuple[str | None, dict | None]:
        """(verdict, P(A/B/C) or None)."""
        if self.logprobs and reply.logprobs:
            probs = verdict_probs(reply.logprobs[0])
            if probs is not None:
                return best(probs), probs
        # A pre-filled reply continues the prefill: read them together.
        return parse_verdict(self.prompt.kind, (ask.prefill or "") + reply.text), None

    def _repair_request(self, ask: ChatRequest, reply: ChatResult) -> ChatRequest:
        messages = [*ask.messages, {"role": "assistant", "content": (ask.prefill or "") + reply.text},
                    {"role": "user", "content": self.prompt.repair}]
        return ChatRequest(messages, sampling={"max_tokens": REPAIR_TOKENS, "n": 1})

    def _finish(self, row: Row, reply: ChatResult, read: tuple[str | None, dict | None],
                repair: tuple[ChatRequest, ChatResult] | None) -> Row:
        out = {**row, **self.usage(*([reply] + ([repair[1]] if repair else [])))}
        if not reply.ok:
            return self.reject(out, f"judge call failed: {reply.error}", retryable=reply.retryable)
        verdict, probs = read
        text = reply.text
        if verdict is None and repair is not None:
            ask, answer = repair
            out["repaired"] = True
            if not answer.ok:
                return self.reject(out, f"repair call failed: {answer.error}", retryable=answer.retryable)
            verdict, _ = self._read(ask, answer)
            text = f"{reply.text}\n\n[repair] {answer.text}"
        out.update(verdict=verdict or "", winner=winner_of(verdict, row["order"]), judge_reply=text[:RAW_REPLY_CHARS])
        if probs is not None:
            optimized = "A" if row["order"] == OPTIMIZED_FIRST else "B"
            original = "B" if optimized == "A" else "A"
            out.update(p_optimized=round(probs[optimized], 6), p_original=round(probs[original], 6),
                       p_tie=round(probs["C"], 6))
        return out
