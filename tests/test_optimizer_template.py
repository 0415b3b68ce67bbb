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
    join = OptimizerTemplate().join_context
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
    assert json.loads(path.read_text()) == template.model_dump()
    assert json.loads(path.read_text())["instruction"] == template.instruction
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


# --- presets, the released model's layout, requests, resolve_template ----------------------


def test_bpo_llama2_renders_the_papers_exact_prompt():
    from bpo_ray.optimizer_template import PRESETS

    template = PRESETS["bpo-llama2"]
    assert (template.style, template.context_separator, template.context_in_output) == ("format", "\n", True)
    assert template.render(None, "Tell me about Harry Potter") == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful "
        "and harmless response:\nTell me about Harry Potter [/INST]"
    )
    # A context joins the prompt with one newline, as the paper's scripts did.
    assert template.render(None, "Summarize the text.", "Owls hunt at night.") == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful "
        "and harmless response:\nSummarize the text.\nOwls hunt at night. [/INST]"
    )
    assert template.render(None, "Summarize the text.", "  ") == template.render(None, "Summarize the text.")


@pytest.mark.parametrize("prompt", ["Fill in {name} and {0}", "Print {prompt} literally", "{{x}} {", "}"])
def test_prompts_with_braces_render_literally(prompt):
    from bpo_ray.optimizer_template import PRESETS

    llama2 = PRESETS["bpo-llama2"].render(None, prompt, "ctx {prompt}")
    assert llama2 == ("[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more "
                      f"helpful and harmless response:\n{prompt}\nctx {{prompt}} [/INST]")
    plain = OptimizerTemplate().render(None, prompt)
    assert f"{PROMPT_MARKER}\n{prompt}\n\n{OUTPUT_MARKER}\n" in plain
    custom = OptimizerTemplate(style="format", format="<{prompt}>").render(None, prompt)
    assert custom == f"<{prompt}>"


@pytest.mark.parametrize("name", ["bpo-ray", "bpo-llama2"])
def test_plain_text_styles_request_raw_text(name):
    from bpo_ray.optimizer_template import PRESETS

    template = PRESETS[name]
    request = template.request("Tell me about owls", "Barn owls only.", sampling={"temperature": 0.5})
    assert request.messages == []
    assert request.prompt == template.render(None, "Tell me about owls", "Barn owls only.")
    assert request.add_special_tokens is True
    assert request.sampling == {"temperature": 0.5}


def test_chat_style_requests_a_chat():
    from bpo_ray.optimizer_template import PRESETS

    template = OptimizerTemplate(style="chat", instruction="Improve this prompt.")
    request = template.request("Tell me about owls", "Barn owls only.")
    assert request.prompt is None
    assert request.messages == [
        {"role": "user", "content": "Improve this prompt.\n\nTell me about owls\n\nBarn owls only."}]
    assert PRESETS["chat"].request("hi").messages == [{"role": "user", "content": f"{DEFAULT_INSTRUCTION}\n\nhi"}]


def test_stop_only_for_the_instruction_style():
    from bpo_ray.optimizer_template import PRESETS

    assert OptimizerTemplate().stop == ["\n### "]
    assert PRESETS["bpo-ray"].stop == ["\n### "]
    assert PRESETS["chat"].stop == []
    assert PRESETS["bpo-llama2"].stop == []


def test_join_context_with_a_custom_separator():
    from bpo_ray.optimizer_template import join_context

    assert join_context("Summarize.", "Some text.", " | ") == "Summarize. | Some text."
    assert join_context("Summarize.", "Some text.") == "Summarize.\n\nSome text."
    assert join_context("Summarize.", "", " | ") == "Summarize."
    template = OptimizerTemplate(context_separator="\n---\n")
    assert template.join_context("Summarize.", "Some text.") == "Summarize.\n---\nSome text."
    assert template.render(None, "Summarize.", "Some text.").count("Summarize.\n---\nSome text.") == 1
    assert template.request("Summarize.", "Some text.").prompt == template.render(None, "Summarize.", "Some text.")


@pytest.mark.parametrize("fmt", [None, "no placeholder", "{prompt} and {prompt}", "{Prompt}"])
def test_a_format_template_needs_one_prompt_placeholder(fmt):
    from bpo_ray.optimizer_template import resolve_template

    with pytest.raises(ValidationError, match=r"exactly one \{prompt\} placeholder"):
        OptimizerTemplate(style="format", format=fmt)
    with pytest.raises(ConfigError, match=r"template: not a valid optimizer template .*\{prompt\}"):
        resolve_template({"style": "format", "format": fmt}, None)


def test_bpo_llama2_round_trips_through_a_file(tmp_path):
    from bpo_ray.optimizer_template import PRESETS

    path = PRESETS["bpo-llama2"].save(tmp_path / "bpo")
    assert json.loads(path.read_text())["format"] == PRESETS["bpo-llama2"].format
    assert OptimizerTemplate.load(tmp_path / "bpo") == PRESETS["bpo-llama2"]
    assert OptimizerTemplate.load(path) == PRESETS["bpo-llama2"]


def test_resolve_template(tmp_path):
    from bpo_ray.optimizer_template import PRESETS, resolve_template

    custom = OptimizerTemplate(instruction="Improve this prompt.", context_separator="\n")
    trained = tmp_path / "trained"
    custom.save(trained)
    plain = tmp_path / "plain"
    plain.mkdir()
    # None: the model folder's own template, else the default layout.
    assert resolve_template(None, str(trained)) == custom
    assert resolve_template(None, str(plain)) == PRESETS["bpo-ray"] == OptimizerTemplate()
    assert resolve_template(None, None) == PRESETS["bpo-ray"]
    # A preset name wins over the model folder's file.
    assert resolve_template("bpo-llama2", str(trained)) is PRESETS["bpo-llama2"]
    assert resolve_template("chat", None).style == "chat"
    # A template file or a folder holding one.
    assert resolve_template(str(trained / TEMPLATE_FILE), str(plain)) == custom
    assert resolve_template(str(trained), None) == custom
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"style": "format", "format": "Q: {prompt}\nA:"}))
    assert resolve_template(str(other), None).render(None, "Why?") == "Q: Why?\nA:"
    # Inline templates, as a dict or an object.
    assert resolve_template({"style": "chat"}, None) == OptimizerTemplate(style="chat")
    assert resolve_template(custom, str(plain)) is custom


def test_resolve_template_errors(tmp_path):
    from bpo_ray.optimizer_template import resolve_template

    with pytest.raises(ConfigError, match=r"'llama3' is neither a preset \(bpo-ray, chat, bpo-llama2\)"):
        resolve_template("llama3", None)
    with pytest.raises(ConfigError, match=TEMPLATE_FILE):
        resolve_template(str(tmp_path), None)  # a folder without a template file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"style": "format", "format": "no placeholder"}))
    with pytest.raises(ConfigError, match="bad.json: not a valid optimizer template"):
        resolve_template(str(bad), None)
