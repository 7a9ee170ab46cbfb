"""Reference-guided judge: for questions with a known answer, prefer the completion the QA scorer grades higher.

The order of grades (llmware points): correct (1) > partial = refusal (0.5) > incorrect (0) > hallucination (-1):
a right answer beats everything, and declining beats inventing. Equal grades are a tie. No model is run, so
preferences for FinanceBench-style data cost nothing and need no network.
"""

from __future__ import annotations

from typing import Any, Sequence

from alignloop.evaluate.qa import LLMWARE_POINTS, grade
from alignloop.judges.base import Verdict, prompt_text


class ReferenceJudge:
    name = "reference"
    identity = "alignloop.evaluate.qa (FinanceBench rules)"

    def judge(self, prompt: Any, completions: Sequence[str], reference: str | None = None,
              context: str | None = None) -> Verdict:
        if reference is None:
            raise ValueError("the reference judge needs the gold answer of each item (an 'answer' field)")
        if len(completions) != 2:
            raise ValueError(f"a pairwise judge compares 2 completions, got {len(completions)}")
        if context is None:
            # the source text an answer's numbers may come from: the prompt, where qa_prompt puts the context
            # (as score_qa does), so an unsupported number grades as a hallucination, a copied one as incorrect
            context = prompt_text(prompt)
        grades = [grade(c, reference, context=context)[0] for c in completions]
        pts = [LLMWARE_POINTS[g] for g in grades]
        detail = {"grades": grades}
        if pts[0] > pts[1]:
            return Verdict(0, "A", 1.0, detail)
        if pts[1] > pts[0]:
            return Verdict(1, "B", 0.0, detail)
        return Verdict(None, "tie", 0.5, detail)

    def judge_many(self, items: Sequence[tuple[Any, Sequence[str], str | None]]) -> list[Verdict]:
        return [self.judge(p, c, r) for p, c, r in items]
