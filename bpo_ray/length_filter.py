"""The paper's length filter, applied to every rewrite: by construct to the pairs it builds,
by optimize to the optimizer's rewrites."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LengthFilter(BaseModel):
    """The paper's filter: an optimized prompt much shorter or much longer than the original
    usually lost information or leaked the answer (lengths in characters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_shrink: float = Field(2.0, gt=0, description="Reject when original/optimized length exceeds this.")
    max_growth: float = Field(6.0, gt=0, description="Reject when optimized/original length exceeds this.")

    def check(self, original: str, optimized: str) -> str | None:
        a, b = len(original.strip()), len(optimized.strip())
        if b == 0:
            return "optimized prompt is empty"
        if a / b > self.max_shrink:
            return f"length filter: original/optimized = {a / b:.2f} > {self.max_shrink:g}"
        if a and b / a > self.max_growth:
            return f"length filter: optimized/original = {b / a:.2f} > {self.max_growth:g}"
        return None
