"""Settings of the evaluate job (YAML keys; CLI flags override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bpo_ray.data.prompts import PromptFields
from bpo_ray.evaluate.judge_prompts import JudgePrompt
from bpo_ray.models.spec import ModelSpec, Sampling
from bpo_ray.runner import StageJobConfig


def _judge_default() -> ModelSpec:
    # Greedy: a judge should give the same verdict for the same pair.
    return ModelSpec(sampling=Sampling(temperature=0.0, max_tokens=512))


class EvaluateFields(PromptFields):
    """Input field names: the prompt fields, plus the two answers and the grouping columns."""

    original_response: list[str] = Field(["original_response"], description="Answer to the original prompt.")
    optimized_response: list[str] = Field(["optimized_response"], description="Answer to the optimized prompt.")
    target: list[str] = Field(["target"], description="Target model name (grouping; optional).")
    category: list[str] = Field(["category"], description="Category (per-category breakdown; optional).")


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    completion_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class EndpointSpec(ModelSpec):
    """A served target to evaluate live: `base_url` is the graph's (…/v1), `model` the target X
    (answered as X and as bpo/X). Sampling defaults to the paper's target sampling."""

    provider: Literal["openai"] = Field("openai", description="An OpenAI-compatible endpoint.")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, top_p=1.0, max_tokens=1024))
    # A bpo/X answer is a rewrite then up to 1024 tokens; a graph on CPUs takes minutes for it,
    # and a request retried on timeout is computed twice.
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout in seconds.")


class EvaluateConfig(StageJobConfig):
    judge: ModelSpec = Field(default_factory=_judge_default, description="The judge model (an API model in the paper).")
    judge_prompt: str | JudgePrompt = Field(
        "pairwise", description="pairwise (the paper's GPT-4 judge), ranking (its Claude judge), a YAML/JSON file, or inline.")
    orders: Literal["both", "random"] = Field(
        "both", description="both: judge each pair with either answer first (a flip counts as a tie); "
        "random: one seeded random order per pair (the paper's protocol).")
    verdict: Literal["text", "logprobs"] = Field(
        "text", description="text: parse the reply; logprobs: P(A/B/C) at the verdict token of a verdict-only reply.")
    repair: bool = Field(True, description="Ask once more for the verdict alone when a reply has none.")
    seed: int = Field(0, description="Seed of random orders and of the bootstrap interval.")
    fields: EvaluateFields = Field(default_factory=EvaluateFields, description="Input field names.")
    max_input_chars: int = Field(32_000, ge=100, description="Pairs whose question and answers exceed this are rejected.")
    max_tokens: int | None = Field(
        None, ge=1, description="Token budget of the judge (prompt + completion) for this run: when reached, "
        "the job stops judging; the rest is reported as not judged and a re-run continues.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Per judge model name: USD per million tokens, for the cost estimate.")
    endpoint: EndpointSpec | None = Field(
        None, description="Live evaluation: a running BPO graph (`bpo-ray serve`) answers the input's prompts as "
        "both `target` and `bpo/target`; then the judge compares the two answers. The input is then a test set of prompts.")
