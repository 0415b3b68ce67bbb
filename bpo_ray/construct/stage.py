"""The construct stage: one feedback row in, one (prompt, optimized prompt) pair or one
rejected row out. Round one asks for comparison + rewrite; a reply without the optimized
instruction gets one repair round asking only for it; then the paper's length filter."""

from __future__ import annotations

from typing import Any

from bpo_ray.construct.parse import Parsed, parse_continuation, parse_reply
from bpo_ray.length_filter import LengthFilter
from bpo_ray.construct.prompts import construction_request, repair_request
from bpo_ray.models.base import ChatRequest, ChatResult
from bpo_ray.models.stage import ModelStage, Row

RAW_REPLY_CHARS = 4000  # enough to debug a bad reply, small enough for a Parquet cell


class ConstructStage(ModelStage):
    stage_name = "construct"
    required_columns = ("id", "key", "instruction", "context", "has_context", "good_res", "bad_res")
    output_columns = {"optimized_prompt": "", "comparison": "", "repaired": False, "raw_reply": ""}

    def __init__(self, spec: dict, *, length_filter: dict | None = None, repair: bool = True, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.length_filter = LengthFilter.model_validate(length_filter or {})
        self.repair = repair

    async def process_rows(self, rows: list[Row]) -> list[Row]:
        backend = self.backend
        first = [construction_request(r) for r in rows]
        replies = await backend.chat_batch(first)
        parsed: list[Parsed | None] = [parse_reply(r.text) if r.ok else None for r in replies]

        repairs: dict[int, tuple[ChatRequest, ChatResult]] = {}
        todo = [i for i, (r, p) in enumerate(zip(replies, parsed)) if r.ok and p is None]
        if self.repair and todo:
            prefill = getattr(backend, "supports_prefill", self.spec.prefill)
            asks = [repair_request(rows[i], prefill=prefill) for i in todo]
            for i, ask, reply in zip(todo, asks, await backend.chat_batch(asks)):
                repairs[i] = (ask, reply)
        return [self._finish(row, replies[i], parsed[i], repairs.get(i)) for i, row in enumerate(rows)]

    def _finish(self, row: Row, reply: ChatResult, parsed: Parsed | None,
                repair: tuple[ChatRequest, ChatResult] | None) -> Row:
        calls = [reply] + ([repair[1]] if repair else [])
        out = {**row, **self.usage(*calls)}
        if not reply.ok:
            return self.reject(out, f"model call failed: {reply.error}", retryable=reply.retryable)
        if parsed is None and repair is not None:
            ask, answer = repair
            out["repaired"] = True
            if not answer.ok:
                return self.reject(out, f"repair call failed: {answer.error}", retryable=answer.retryable)
            parsed = parse_continuation(ask.prefill, answer.text)
        if parsed is None:
            out["raw_reply"] = reply.text[:RAW_REPLY_CHARS]
            where = " (also after the repair round)" if repair else ""
            return self.reject(out, f"no optimized instruction in the reply{where}")
        if problem := self.length_filter.check(row["instruction"], parsed.optimized):
            out["raw_reply"] = reply.text[:RAW_REPLY_CHARS]
            return self.reject({**out, "optimized_prompt": parsed.optimized}, problem)
        return {**out, "optimized_prompt": parsed.optimized, "comparison": parsed.comparison}
