"""Live evaluation of a served BPO graph: the graph answers each prompt of a test set as its
target X and as bpo/X (which optimizes the prompt first and says how), and those answer pairs
are what the judge compares. A/B evaluation of what is deployed, on the same runner as every
stage: resumable, rate limited, every row accounted for.

`run_live_answers` writes DIR/answers (a `responses` table in generate's layout, with the
served optimized prompt beside each answer); `run_evaluate` then judges that folder.
"""

from __future__ import annotations

from typing import Any

from bpo_ray.data.prompts import PromptFields, read_prompts
from bpo_ray.evaluate.config import EvaluateConfig
from bpo_ray.models import build_backend
from bpo_ray.models.base import ChatRequest, ChatResult
from bpo_ray.models.stage import ModelStage, Row
from bpo_ray.runner import REJECTED_TABLE, OutputTable, StagePlan, StageStep, run_stage
from bpo_ray.serve.config import BPO_PREFIX

ANSWERS_FOLDER = "answers"
RESPONSES_TABLE = "responses"  # generate's table name: evaluate reads the folder as it reads generate's


class LiveAnswerStage(ModelStage):
    """Ask the endpoint as X (the original prompt's answer) and as bpo/X (the optimized one)."""

    stage_name = "live"
    required_columns = ("id", "prompt", "context")
    output_columns = {
        "target": "",
        "optimized_prompt": "",
        "unchanged": False,
        "original_response": "",
        "optimized_response": "",
        "original_finish_reason": "",
        "optimized_finish_reason": "",
        "optimize_model": "",  # the served optimizer, in the column generate carries from optimize
    }

    def __init__(self, spec: dict, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self._bpo = None

    @property
    def bpo_backend(self):
        if self._bpo is None:  # the same endpoint and client settings, model bpo/X
            key = self._api_key.get_secret_value() if hasattr(self._api_key, "get_secret_value") else self._api_key
            spec = self.spec.model_copy(update={"model": BPO_PREFIX + self.spec.model})
            self._bpo = build_backend(spec, rate_limiter=self.backend.rate_limiter, api_key=key)  # one endpoint, one limit
        return self._bpo

    async def process_rows(self, rows: list[Row]) -> list[Row]:
        import asyncio

        asks = [ChatRequest(messages=[{"role": "user", "content": _joined(r)}]) for r in rows]
        plain, optimized = await asyncio.gather(self.backend.chat_batch(asks), self.bpo_backend.chat_batch(asks))
        return [self._finish(r, a, b) for r, a, b in zip(rows, plain, optimized)]

    def _finish(self, row: Row, plain: ChatResult, optimized: ChatResult) -> Row:
        out = {**row, **self.usage(plain, optimized), "target": self.spec.model}
        for kind, reply in (("original", plain), ("optimized", optimized)):
            if not reply.ok:
                return self.reject(out, f"{kind} answer: endpoint call failed: {reply.error}", retryable=reply.retryable)
            out[f"{kind}_response"] = reply.text
            out[f"{kind}_finish_reason"] = reply.finish_reasons[0] if reply.finish_reasons else ""
        bpo = optimized.extra.get("bpo")
        if not isinstance(bpo, dict) or not isinstance(bpo.get("optimized_prompt"), str):
            return self.reject(out, f"the endpoint's {BPO_PREFIX}{self.spec.model} reply has no `bpo` object: "
                               "is it a bpo-ray serve graph?")
        out["optimized_prompt"], out["unchanged"] = bpo["optimized_prompt"], bool(bpo.get("unchanged"))
        out["optimize_model"] = str(bpo.get("optimizer") or "")
        return out


def _joined(row: Row) -> str:
    from bpo_ray.optimizer_template import CONTEXT_SEPARATOR, join_context

    return join_context(row["prompt"], row["context"], CONTEXT_SEPARATOR)


def live_answers_config(cfg: EvaluateConfig) -> EvaluateConfig:
    """The answering run's settings: the job settings of `cfg`, its own folder under cfg.output."""
    return cfg.model_copy(update={"output": f"{cfg.output.rstrip('/')}/{ANSWERS_FOLDER}"})


def live_answers_plan(cfg: EvaluateConfig) -> StagePlan:
    answers = live_answers_config(cfg)
    reserved = tuple(LiveAnswerStage.added_columns())
    return StagePlan(
        config=answers,
        steps=[StageStep(LiveAnswerStage, cfg.endpoint)],
        read=lambda salt: read_prompts(cfg.input, PromptFields.model_validate(cfg.fields.model_dump(
                                           include=set(PromptFields.model_fields))), max_input_chars=cfg.max_input_chars,
                                       key_salt=salt, reserved=reserved),
        output_table=OutputTable(RESPONSES_TABLE, exclude=("status", "reason", "retryable", "source")),
        rejected_table=OutputTable(REJECTED_TABLE, exclude=("status",)),
        settings={"max_input_chars": cfg.max_input_chars},
    )


def run_live_answers(cfg: EvaluateConfig) -> dict[str, Any]:
    """Ask the endpoint for both answers to every prompt (resumable); returns the run's summary."""
    return run_stage(live_answers_plan(cfg))
