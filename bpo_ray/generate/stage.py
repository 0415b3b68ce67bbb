"""GenerateStage: a target model answers a row's original and optimized prompt.

Both prompts are joined with the context the same way and sent the same way (one user turn,
after the same optional system message), so the only difference a judge sees is the rewrite.
A row whose prompt the optimizer left unchanged is answered once; both columns share the
answer (`shared_response`), which halves its cost.
"""

from __future__ import annotations

from typing import Any

from bpo_ray.models.base import ChatRequest, ChatResult
from bpo_ray.models.stage import ModelStage, Row
from bpo_ray.optimizer_template import join_context

ANSWERS = ("original", "optimized")


class GenerateStage(ModelStage):
    stage_name = "generate"
    required_columns = ("id", "prompt", "context", "optimized_prompt", "unchanged")
    output_columns = {
        "target": "",
        "original_response": "",
        "optimized_response": "",
        "original_finish_reason": "",
        "optimized_finish_reason": "",
        "shared_response": False,
    }

    def __init__(self, spec: dict, *, target: str, context_separator: str, system_prompt: str | None = None,
                 answers: tuple[str, ...] = ANSWERS, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.target, self.separator, self.system_prompt = target, context_separator, system_prompt
        self.answers = tuple(answers)

    def _request(self, prompt: str, context: str) -> ChatRequest:
        text = join_context(prompt, context, self.separator)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return ChatRequest(messages=[*system, {"role": "user", "content": text}])

    def _prompts(self, row: Row) -> dict[str, str]:
        """The prompts to answer, by kind; one when the rewrite changed nothing."""
        wanted = {kind: row["prompt" if kind == "original" else "optimized_prompt"] for kind in self.answers}
        if len(wanted) == 2 and (row["unchanged"] or wanted["optimized"] == wanted["original"]):
            del wanted["optimized"]
        return wanted

    async def process_rows(self, rows: list[Row]) -> list[Row]:
        asks = [(i, kind, self._request(text, rows[i]["context"]))
                for i, row in enumerate(rows) for kind, text in self._prompts(row).items()]
        replies = await self.backend.chat_batch([request for _, _, request in asks])
        answered: list[dict[str, ChatResult]] = [{} for _ in rows]
        for (i, kind, _), reply in zip(asks, replies):
            answered[i][kind] = reply
        return [self._finish(row, got) for row, got in zip(rows, answered)]

    def _finish(self, row: Row, got: dict[str, ChatResult]) -> Row:
        out = {**row, **self.usage(*got.values()), "target": self.target}
        for kind, reply in got.items():
            if not reply.ok:
                return self.reject(out, f"{kind} prompt: model call failed: {reply.error}", retryable=reply.retryable)
            out[f"{kind}_response"] = reply.text
            out[f"{kind}_finish_reason"] = reply.finish_reasons[0] if reply.finish_reasons else ""
        if len(got) < len(self.answers):  # one answer serves both prompts
            missing = next(k for k in self.answers if k not in got)
            present = next(iter(got))
            out[f"{missing}_response"] = out[f"{present}_response"]
            out[f"{missing}_finish_reason"] = out[f"{present}_finish_reason"]
            out["shared_response"] = True
        return out
