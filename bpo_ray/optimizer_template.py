"""The optimizer prompt: what the prompt optimizer sees before it writes the optimized prompt.

Defined once, here, and used by training, the optimize stage and the serving Optimizer. A
trained optimizer folder carries its template as `bpo_template.json` beside the weights, so
the stages that load the model read the same template instead of being told it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bpo_ray.errors import ConfigError
from bpo_ray.models.base import ChatRequest

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
PROMPT_PLACEHOLDER = "{prompt}"

# The released BPO model's own layout (thu-coai/BPO, src/infer_example.py), word for word.
LLAMA2_BPO_FORMAT = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more "
    "helpful and harmless response:\n{prompt} [/INST]"
)

_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


def join_context(prompt: str, context: str | None, separator: str = CONTEXT_SEPARATOR) -> str:
    """`prompt`, then `separator` and the context when there is one (generate joins both the
    original and the optimized prompt this way)."""
    return f"{prompt}{separator}{context}" if context and context.strip() else prompt


class OptimizerTemplate(BaseModel):
    """How a user prompt (plus optional context) is laid out for the optimizer model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    style: Literal["instruction", "chat", "format"] = Field(
        "instruction",
        description="instruction: plain-text layout with markers (base models); "
        "chat: the tokenizer's chat template, instruction and prompt as the user turn; "
        "format: the `format` string with {prompt} replaced (a released model's own layout).",
    )
    instruction: str = Field(
        DEFAULT_INSTRUCTION, min_length=1, description="The task the optimizer is given before the prompt."
    )
    format: str | None = Field(
        None, description="For style 'format': the text around the prompt, with one {prompt} placeholder."
    )
    context_separator: str = Field(
        CONTEXT_SEPARATOR, description="What joins a prompt and its context (for the optimizer and the targets)."
    )
    context_in_output: bool = Field(
        False,
        description="Whether the optimizer was trained to copy the context into its rewrite (the released "
        "BPO model was): then a rewrite without the context has dropped it.",
    )

    @model_validator(mode="after")
    def _check_format(self) -> "OptimizerTemplate":
        if self.style == "format" and (self.format or "").count(PROMPT_PLACEHOLDER) != 1:
            raise ValueError("style 'format' needs a `format` string with exactly one {prompt} placeholder")
        return self

    def join_context(self, prompt: str, context: str | None = "") -> str:
        """The prompt followed by its context; no context, the prompt unchanged.

        The default separator is a blank line: the original BPO processing mostly used a single
        newline (the `bpo-llama2` preset keeps it), but contexts often hold single newlines of
        their own. Optimize and generate join the optimized prompt and the context the same way.
        """
        return join_context(prompt, context, self.context_separator)

    def render(self, tokenizer: Any, prompt: str, context: str | None = "") -> str:
        """The text the model sees before the optimized prompt."""
        return self.wrap(tokenizer, self.join_context(prompt, context))

    def wrap(self, tokenizer: Any, text: str) -> str:
        """`render` for an already joined prompt+context (training shortens that text first)."""
        if self.style == "instruction":
            return f"{self.instruction}\n\n{PROMPT_MARKER}\n{text}\n\n{OUTPUT_MARKER}\n"
        if self.style == "format":
            return self.format.replace(PROMPT_PLACEHOLDER, text)  # not str.format: prompts hold braces
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template.style: 'chat' needs a tokenizer with a chat template; this one has none")
        return tokenizer.apply_chat_template(self._chat(text), tokenize=False, add_generation_prompt=True)

    def _chat(self, text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{self.instruction}\n\n{text}"}]

    def request(self, prompt: str, context: str | None = "", **kwargs: Any) -> ChatRequest:
        """The model request for one prompt, without needing the tokenizer: plain-text layouts go
        as raw text (local: token-identical to `encode`; HTTP: /v1/completions), the chat style
        as a chat, which the backend or server renders with the model's own template."""
        text = self.join_context(prompt, context)
        if self.style == "chat":
            return ChatRequest(messages=self._chat(text), **kwargs)
        return ChatRequest(messages=[], prompt=self.wrap(None, text),
                           add_special_tokens=self.add_special_tokens, **kwargs)

    @property
    def stop(self) -> list[str]:
        """Where a rewrite ends besides EOS: a model that has not learned to stop (or an untrained
        one) goes on with another marker section, which is never part of the rewrite."""
        return ["\n### "] if self.style == "instruction" else []

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer adds its own specials when encoding a rendered prompt.

        A chat template writes its own BOS, so the tokenizer must not add another; plain text
        gets the tokenizer's usual specials, as vLLM and HF pipelines add for a text prompt (and
        as the paper's scripts tokenized the Llama-2 layout).
        """
        return self.style != "chat"

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
    def load(cls, path: str | Path) -> "OptimizerTemplate":
        """From a trained optimizer folder (its bpo_template.json) or a template file."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / TEMPLATE_FILE
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: no such file; a trained optimizer folder carries its prompt template there"
            ) from None
        except ValidationError as exc:
            raise ConfigError(f"{path}: not a valid optimizer template ({exc.error_count()} errors: "
                              f"{exc.errors()[0]['msg']})") from None

PRESETS: dict[str, OptimizerTemplate] = {
    # What `bpo-ray train` writes by default: plain-text markers, any tokenizer.
    "bpo-ray": OptimizerTemplate(),
    # The model's own chat template: chat-tuned optimizers and chat-only APIs.
    "chat": OptimizerTemplate(style="chat"),
    # The released BPO checkpoint (THUDM/BPO): its Llama-2 layout, prompt and context joined by one
    # newline, and the context copied into the rewrite, as the paper's scripts fed it.
    "bpo-llama2": OptimizerTemplate(style="format", format=LLAMA2_BPO_FORMAT, context_separator="\n",
                                    context_in_output=True),
}


def resolve_template(setting: str | dict | OptimizerTemplate | None, model_folder: str | None) -> OptimizerTemplate:
    """The template an optimizer is fed with.

    `setting`: a preset name, a bpo_template.json file (or a folder holding one), an inline
    template, or None: then the model folder's own bpo_template.json (what `bpo-ray train`
    wrote), else the default layout for a plain model folder.
    """
    if isinstance(setting, OptimizerTemplate):
        return setting
    if isinstance(setting, dict):
        try:
            return OptimizerTemplate.model_validate(setting)
        except ValidationError as exc:
            raise ConfigError(f"template: not a valid optimizer template ({exc.errors()[0]['msg']})") from None
    if setting is None:
        if model_folder and (Path(model_folder) / TEMPLATE_FILE).is_file():
            return OptimizerTemplate.load(model_folder)
        return PRESETS["bpo-ray"]
    if setting in PRESETS:
        return PRESETS[setting]
    path = Path(setting).expanduser()
    if path.exists():
        return OptimizerTemplate.load(path)
    raise ConfigError(f"template: {setting!r} is neither a preset ({', '.join(PRESETS)}) nor a template file")
