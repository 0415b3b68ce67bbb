"""The optimizer prompt: what the prompt optimizer sees before it writes the optimized prompt.

Defined once, here, and used by training, the optimize stage and the serving Optimizer. A
trained optimizer folder carries its template as `bpo_template.json` beside the weights, so
the stages that load the model read the same template instead of being told it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bpo_ray.errors import ConfigError

TEMPLATE_FILE = "bpo_template.json"

DEFAULT_INSTRUCTION = (
    "You are an expert prompt engineer. Rewrite the user's prompt below so that an AI assistant "
    "gives a more helpful, accurate and harmless answer. Keep all of its information and intent. "
    "Reply with the rewritten prompt only."
)

# Plain-text markers rather than Llama-2's `[INST] ... [/INST]` wrapper: any tokenizer encodes
# them, so the "instruction" style suits a base model of any family, and the last marker gives
# the target a clean start. A model's own chat format is what the "chat" style is for.
PROMPT_MARKER = "### Prompt:"
OUTPUT_MARKER = "### Optimized prompt:"
CONTEXT_SEPARATOR = "\n\n"

_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


class OptimizerTemplate(BaseModel):
    """How a user prompt (plus optional context) is laid out for the optimizer model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    style: Literal["instruction", "chat"] = Field(
        "instruction",
        description="instruction: plain-text layout with markers (base models); "
        "chat: the tokenizer's chat template, instruction and prompt as the user turn.",
    )
    instruction: str = Field(
        DEFAULT_INSTRUCTION, min_length=1, description="The task the optimizer is given before the prompt."
    )

    @staticmethod
    def join_context(prompt: str, context: str | None = "") -> str:
        """The prompt followed by its context after a blank line; no context, prompt unchanged.

        The original BPO processing mostly used a single newline (plus random variants); a blank
        line is used here because contexts often hold single newlines of their own, and the
        optimize stage joins the optimized prompt and the context the same way.
        """
        return f"{prompt}{CONTEXT_SEPARATOR}{context}" if context and context.strip() else prompt

    def render(self, tokenizer: Any, prompt: str, context: str | None = "") -> str:
        """The text the model sees before the optimized prompt."""
        return self.wrap(tokenizer, self.join_context(prompt, context))

    def wrap(self, tokenizer: Any, text: str) -> str:
        """`render` for an already joined prompt+context (training shortens that text first)."""
        if self.style == "instruction":
            return f"{self.instruction}\n\n{PROMPT_MARKER}\n{text}\n\n{OUTPUT_MARKER}\n"
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template.style: 'chat' needs a tokenizer with a chat template; this one has none")
        messages = [{"role": "user", "content": f"{self.instruction}\n\n{text}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer adds its own specials when encoding a rendered prompt.

        A chat template writes its own BOS, so the tokenizer must not add another; plain text
        gets the tokenizer's usual specials, as vLLM and HF pipelines add for a text prompt.
        """
        return self.style == "instruction"

    def encode(self, tokenizer: Any, prompt: str, context: str | None = "") -> list[int]:
        """Token ids of `render(...)`: what the model is fed before it generates."""
        rendered = self.render(tokenizer, prompt, context)
        return list(tokenizer(rendered, add_special_tokens=self.add_special_tokens)["input_ids"])

    @staticmethod
    def parse_output(text: str) -> str:
        """The optimized prompt from the model's reply: whitespace and one pair of
        surrounding quotes removed (ChatGPT-built targets sometimes come quoted)."""
        text = text.strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        return text

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TEMPLATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "OptimizerTemplate":
        path = Path(folder) / TEMPLATE_FILE
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: no such file; a trained optimizer folder carries its prompt template there"
            ) from None
        except ValidationError as exc:
            raise ConfigError(f"{path}: not a valid optimizer template ({exc.error_count()} errors: "
                              f"{exc.errors()[0]['msg']})") from None
