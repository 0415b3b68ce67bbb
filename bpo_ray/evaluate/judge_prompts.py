"""The judge's prompts: versioned, in the project's own words, with the verdict format each one
asks for. The version goes into every judgment's cache key, so editing a prompt re-judges.

- `pairwise`: an impartial comparison of two answers to one user question that ends with
  [[A]], [[B]] or [[C]] (a tie), the verdict format of the paper's GPT-4 judge (and MT-bench's).
- `ranking`: the paper's Claude judge: rank two named outputs, reply with a JSON list that is
  parsed as JSON, never evaluated as code.
A custom prompt is a YAML/JSON file with the same fields; placeholders {question}, {answer_a},
{answer_b} are filled by plain replacement (answers are full of braces).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bpo_ray.errors import ConfigError

PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


class JudgePrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = Field(..., description="Part of the cache key: bump it when the wording changes.")
    kind: Literal["pairwise", "ranking"] = Field(..., description="How the verdict is read: [[A]]/[[B]]/[[C]] tags, or a JSON ranking.")
    system: str = ""
    user: str = Field(..., description="Template with {question}, {answer_a} and {answer_b}.")
    repair: str = Field(..., description="The follow-up sent once when a reply has no verdict.")
    verdict_only: str = Field(
        "", description="Appended to `user` in logprobs mode: ask for the verdict and nothing else, so the "
        "verdict is among the first tokens.")

    @model_validator(mode="after")
    def _placeholders(self) -> "JudgePrompt":
        missing = [p for p in PLACEHOLDERS if p not in self.user]
        if missing:
            raise ValueError(f"judge prompt {self.name!r}: user template lacks {', '.join(missing)}")
        return self

    def messages(self, question: str, answer_a: str, answer_b: str, *, verdict_only: bool = False) -> list[dict]:
        values = {"{question}": question, "{answer_a}": answer_a, "{answer_b}": answer_b}
        # One pass: a placeholder inside a filled-in answer stays text.
        user = _PLACEHOLDER.sub(lambda m: values[m.group(0)], self.user)
        if verdict_only and self.verdict_only:
            user = f"{user}\n\n{self.verdict_only}"
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": user}]


PAIRWISE = JudgePrompt(
    name="pairwise",
    version="1",
    kind="pairwise",
    system=(
        "You are a careful, impartial judge of AI assistants. You compare two answers to the same "
        "user question and decide which one serves the user better."
    ),
    user=(
        "Compare the two answers below to the user's question. Judge helpfulness, correctness, "
        "relevance, depth and clarity, and whether the answer does what the user asked. Rules:\n"
        "- The order in which the answers appear must not influence you.\n"
        "- A longer answer is not a better answer; judge what it says.\n"
        "- The labels A and B carry no meaning; ignore any names.\n"
        "First explain your comparison briefly. Then give your verdict on the last line, exactly "
        "one of: [[A]] if answer A is better, [[B]] if answer B is better, [[C]] if they are "
        "equally good.\n\n"
        "[Question]\n{question}\n\n"
        "[Answer A]\n{answer_a}\n[End of answer A]\n\n"
        "[Answer B]\n{answer_b}\n[End of answer B]"
    ),
    repair=(
        "Your reply did not end with a verdict. Reply with the verdict alone: [[A]] if answer A is "
        "better, [[B]] if answer B is better, [[C]] for a tie."
    ),
    verdict_only="Do not explain. Reply with the verdict only: [[A]], [[B]] or [[C]].",
)

RANKING = JudgePrompt(
    name="ranking",
    version="1",
    kind="ranking",
    system="You rank the outputs of AI models by how well they answer a user's instruction.",
    user=(
        "Two models, model_1 and model_2, answered the instruction below. Rank them by quality "
        "(helpfulness, accuracy, relevance, detail), ignoring their order and their length. Give "
        "both the same rank if they are equally good.\n\n"
        "[Instruction]\n{question}\n\n"
        "[model_1]\n{answer_a}\n[End of model_1]\n\n"
        "[model_2]\n{answer_b}\n[End of model_2]\n\n"
        "Reply with a JSON list and nothing else, for example:\n"
        '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]'
    ),
    repair=(
        'Reply with the JSON ranking alone, for example: [{"model": "model_1", "rank": 1}, '
        '{"model": "model_2", "rank": 2}]'
    ),
)

PRESETS = {p.name: p for p in (PAIRWISE, RANKING)}


def load_judge_prompt(setting: str | JudgePrompt | dict) -> JudgePrompt:
    """A preset name, a YAML/JSON file, or an inline mapping."""
    if isinstance(setting, JudgePrompt):
        return setting
    if isinstance(setting, dict):
        return JudgePrompt.model_validate(setting)
    if setting in PRESETS:
        return PRESETS[setting]
    path = Path(setting)
    if not path.is_file():
        raise ConfigError(f"judge_prompt: {setting!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return JudgePrompt.model_validate(data)
    except Exception as exc:  # yaml or validation: one line naming the file
        raise ConfigError(f"judge_prompt: {path}: {exc}") from None
