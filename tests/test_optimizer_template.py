"""The optimizer prompt template: layout, chat style, special tokens, save/load, output parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from tokenizers import processors
from transformers import AutoTokenizer

from bpo_ray.errors import ConfigError
from bpo_ray.optimizer_template import (
    DEFAULT_INSTRUCTION, OUTPUT_MARKER, PROMPT_MARKER, TEMPLATE_FILE, OptimizerTemplate,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def bos_tokenizer(tiny_model_dir: Path):
    """The tiny tokenizer made to add BOS by itself, as Llama's does."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
    )
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    return tok


def test_join_context_puts_a_blank_line_between_prompt_and_context():
    join = OptimizerTemplate.join_context
    assert join("Summarize this.", "Text to summarize.") == "Summarize this.\n\nText to summarize."
    assert join("Summarize this.", "") == "Summarize this."
    assert join("Summarize this.", None) == "Summarize this."
    assert join("Summarize this.", "  \n") == "Summarize this."


def test_instruction_style_layout(tokenizer):
    template = OptimizerTemplate()
    text = template.render(tokenizer, "Tell me about owls", "Barn owls only.")
    assert text == (f"{DEFAULT_INSTRUCTION}\n\n{PROMPT_MARKER}\nTell me about owls\n\nBarn owls only."
                    f"\n\n{OUTPUT_MARKER}\n")
    assert template.render(tokenizer, "Tell me about owls") == template.wrap(tokenizer, "Tell me about owls")


def test_chat_style_uses_the_tokenizers_chat_template(tokenizer):
    template = OptimizerTemplate(style="chat", instruction="Improve this prompt.")
    text = template.render(tokenizer, "Tell me about owls", "Barn owls only.")
    assert text == (
        "<|im_start|>user\nImprove this prompt.\n\nTell me about owls\n\nBarn owls only.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Improve this prompt.\n\nTell me about owls\n\nBarn owls only."}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == expected


def test_chat_style_without_a_chat_template_is_a_config_error(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        OptimizerTemplate(style="chat").render(tok, "hi")


def test_encode_adds_bos_once_in_either_style(bos_tokenizer):
    bos = bos_tokenizer.bos_token_id
    plain = OptimizerTemplate().encode(bos_tokenizer, "hi")
    assert plain[0] == bos and plain[1] != bos  # the tokenizer's own BOS for plain text
    chat = OptimizerTemplate(style="chat").encode(bos_tokenizer, "hi")
    # The chat template writes <|im_start|> itself; the tokenizer must not add a second one.
    assert chat[:2] == [bos, bos_tokenizer.convert_tokens_to_ids("u")]
    assert bos_tokenizer.decode(chat) == OptimizerTemplate(style="chat").render(bos_tokenizer, "hi")


@pytest.mark.parametrize("template", [
    OptimizerTemplate(),
    OptimizerTemplate(style="chat", instruction="Make this prompt clearer: «ünïcode»."),
])
def test_save_and_load_round_trip(tmp_path, template):
    path = template.save(tmp_path / "model")
    assert path == tmp_path / "model" / TEMPLATE_FILE
    assert json.loads(path.read_text()) == {"style": template.style, "instruction": template.instruction}
    assert OptimizerTemplate.load(tmp_path / "model") == template


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=TEMPLATE_FILE):
        OptimizerTemplate.load(tmp_path)
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps({"style": "jinja"}))
    with pytest.raises(ConfigError, match=TEMPLATE_FILE):
        OptimizerTemplate.load(tmp_path)


def test_fields_are_validated():
    with pytest.raises(ValidationError, match="style"):
        OptimizerTemplate(style="alpaca")
    with pytest.raises(ValidationError, match="prompt_file"):
        OptimizerTemplate(prompt_file="x.txt")
    with pytest.raises(ValidationError, match="instruction"):
        OptimizerTemplate(instruction="")


@pytest.mark.parametrize("raw, expected", [
    ("  Explain owls in detail.\n", "Explain owls in detail."),
    ('"Explain owls in detail."', "Explain owls in detail."),
    ("'Explain owls.'", "Explain owls."),
    ("\u201cExplain owls.\u201d", "Explain owls."),
    ('"Explain owls."\n\nExtra line', '"Explain owls."\n\nExtra line'),  # kept whole, not cut
    ('Say "hi"', 'Say "hi"'),  # a quote at one end only stays
    ('"', '"'),
    ("", ""),
])
def test_parse_output(raw, expected):
    assert OptimizerTemplate.parse_output(raw) == expected
