"""OptimizeStage: the optimizer rewrites each prompt; the guards decide what is kept."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from bpo_ray.length_filter import LengthFilter
from bpo_ray.models.base import ChatResult
from bpo_ray.models.stage import ModelStage, Row
from bpo_ray.optimize.guards import Rewrite, check_rewrite, most_different
from bpo_ray.optimize.similarity import SemanticGate
from bpo_ray.optimizer_template import OptimizerTemplate

RAW_REPLY_CHARS = 4000


class OptimizeStage(ModelStage):
    stage_name = "optimize"
    required_columns = ("id", "prompt", "context")
    output_columns = {
        "optimized_prompt": "",
        "unchanged": False,
        "unchanged_reason": "",
        "optimizer": "",
        "mode": "",
        "similarity": -1.0,  # -1: the semantic gate is off
        "candidates": "",
        "raw_reply": "",
    }

    def __init__(self, spec: dict, *, template: dict, mode: str, keep_all: bool = False,
                 length_filter: dict | None = None, semantic_gate: dict | None = None, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.template = OptimizerTemplate.model_validate(template)
        self.mode, self.keep_all = mode, keep_all
        self.length_filter = LengthFilter.model_validate(length_filter or {})
        self.gate = SemanticGate.model_validate(semantic_gate or {})
        self._embedder = None
        # An HTTP actor runs two blocks at once: one embedder, loaded and used by one at a time.
        self._embed_lock = threading.Lock()
        stops = [*(self.spec.sampling.stop or []), *self.template.stop]
        self._sampling = {"stop": stops} if stops else {}

    async def process_rows(self, rows: list[Row]) -> list[Row]:
        requests = [self.template.request(r["prompt"], r["context"], sampling=self._sampling) for r in rows]
        replies = await self.backend.chat_batch(requests)
        verdicts = [[check_rewrite(text, r["prompt"], r["context"], template=self.template,
                                   length_filter=self.length_filter) for text in reply.texts]
                    for r, reply in zip(rows, replies)]
        scores = await self._similarities(rows, verdicts)
        return [self._finish(r, reply, v, s) for r, reply, v, s in zip(rows, replies, verdicts, scores)]

    async def _similarities(self, rows: list[Row], verdicts: list[list[Rewrite]]) -> list[list[float]]:
        """Cosine similarity of each usable rewrite to its prompt; -1 where not computed."""
        if self.gate.min_similarity is None:
            return [[-1.0] * len(v) for v in verdicts]
        pairs = [(r["prompt"], w.optimized) for r, v in zip(rows, verdicts) for w in v if w.usable]
        scores = iter(await asyncio.to_thread(self._embed, pairs) if pairs else [])
        return [[next(scores) if w.usable else -1.0 for w in v] for v in verdicts]

    def _embed(self, pairs: list[tuple[str, str]]) -> list[float]:
        with self._embed_lock:
            if self._embedder is None:  # loaded once per actor, on first use
                from bpo_ray.optimize.similarity import SentenceEmbedder

                self._embedder = SentenceEmbedder(self.gate.model)
            return self._embedder.similarity([a for a, _ in pairs], [b for _, b in pairs])

    def _finish(self, row: Row, reply: ChatResult, rewrites: list[Rewrite], scores: list[float]) -> Row:
        out = {**row, **self.usage(reply), "optimizer": self.spec.display_name(), "mode": self.mode}
        if not reply.ok:
            return self.reject(out, f"model call failed: {reply.error}", retryable=reply.retryable)
        rewrites = [self._gated(w, s) for w, s in zip(rewrites, scores)]
        best = most_different(rewrites) if len(rewrites) > 1 else rewrites[0]
        chosen = rewrites.index(best)
        out["similarity"] = scores[chosen]
        if self.keep_all:
            out["candidates"] = json.dumps(
                [w.optimized for w in sorted(rewrites, key=lambda w: -w.distance) if w.usable], ensure_ascii=False)
        if best.rejected:
            out["raw_reply"] = reply.texts[chosen][:RAW_REPLY_CHARS]
            if len(rewrites) > 1:
                return self.reject({**out, "optimized_prompt": best.optimized},
                                   f"all {len(rewrites)} candidates rejected; first: {best.rejected}")
            return self.reject({**out, "optimized_prompt": best.optimized}, best.rejected)
        return {**out, "optimized_prompt": best.optimized, "unchanged": bool(best.unchanged),
                "unchanged_reason": best.unchanged}

    def _gated(self, rewrite: Rewrite, score: float) -> Rewrite:
        problem = self.gate.check(score) if rewrite.usable and score >= 0 else None
        return Rewrite(rewrite.optimized, rejected=problem, distance=rewrite.distance) if problem else rewrite
