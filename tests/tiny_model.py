"""A tiny random Llama with a byte-level ChatML tokenizer, built offline in about a second.

Its output is noise, but it exercises the real transformers code paths (chat template,
left padding, generate, logits) without any download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<pad>"
MAX_POSITIONS = 4096
"""Room for a full construction prompt (byte tokens); tests exceed it for the too-long path."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    # One token per byte (the 256 ByteLevel symbols, no merges), so any text encodes.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([IM_START, IM_END, PAD])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=IM_START, eos_token=IM_END, pad_token=PAD,
        model_max_length=MAX_POSITIONS,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_tiny_model(path: str | Path, *, seed: int = 0) -> Path:
    """Write a random 2-layer Llama + tokenizer + generation config to `path`."""
    path = Path(path)
    tokenizer = _byte_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END, PAD)}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=ids[IM_START], eos_token_id=ids[IM_END], pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[IM_START], eos_token_id=ids[IM_END], pad_token_id=ids[PAD]
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
