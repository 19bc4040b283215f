"""Completions for the external agreement test (issue 30), and lighteval's scoring of them.

``python tests/eval/agreement_cases.py`` prints the agreement rate and every disagreement as a
Markdown table (pasted into docs/evaluation.md).

Cases: for golds of AIME 2024 (all 30), AMC 2023 (all 40), MATH-500 (every 4th row plus every row
whose gold is a list, an interval or text) and GSM8K (every 25th row), a fixed set of completion
shapes, chosen deterministically: boxed right / wrong, unboxed "final answer is", several boxes
(one value twice, a corrected final box with and without ``$``, every part of a multi-part gold),
truncated (an unterminated box, a cut-off sentence), think-wrapped (a wrong box inside
``<think>...</think>``, the answer after it, boxed or not), units, percentages, degrees, ``\\dfrac`` / decimal spellings.

The reference is lighteval's extractive-match metric as open-r1 runs it, reproduced by calling
Math-Verify (which lighteval's extractive_match_utils.py / math_comparison.py copy) the way
lighteval 0.13 calls it:

* ``src/lighteval/metrics/metrics.py`` L469-484 ``pass_at_k_math`` (and L161-174 ``avg_at_n_math``):
  ``MultilingualExtractiveMatchMetric(gold_extraction_target=[ExprExtractionConfig(),
  LatexExtractionConfig()], pred_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()],
  precision=6)`` inside ``PassAtK(strip_strings=True)``;
* ``src/lighteval/metrics/dynamic_metrics.py`` L155-166 (defaults ``fallback_mode="first_match"``,
  ``extraction_mode="any_match"``, ``timeout_seconds=5``) and L220-262 ``compute``: extract golds
  and predictions with ``extract_target_from_pred``; a gold that extracts to nothing is kept as its
  raw string (L241-243); score 1 when ``compare_gold_target(gold, pred, precision)`` holds for any
  pair;
* ``src/lighteval/utils/utils.py`` L279-317 ``remove_reasoning_tags`` applied to every response
  first (``src/lighteval/pipeline.py`` L347-360, on by default, tags ``[("<think>", "</think>")]``).

Math-Verify's ``parse(pred, extraction_config, fallback_mode, extraction_mode)`` is
``extract_target_from_pred`` with those arguments, and ``verify(gold, pred, float_rounding)`` is
``compare_gold_target`` with ``precision``. The gold string is the one lighteval's task reads: the bare
``answer`` for AIME (``aime_prompt_fn``: ``choices=[line["answer"]]``), AMC and GSM8K (the
number after ``####``), and the worked ``solution`` for MATH-500 (``math_500``:
``choices=[line["solution"]]``, whose boxed answer the Latex target extracts); ours scores
against the ``answer`` column everywhere.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "adaclip_rl" / "data" / "benchmarks"


@dataclass(frozen=True)
class Case:
    id: str
    benchmark: str
    gold: str  # what our benchmark scores against (the answer column)
    completion: str
    shape: str
    lighteval_gold: str  # what lighteval's task scores against (MATH-500: the worked solution)


def _golds() -> list[tuple[str, int, str, str]]:
    out: list[tuple[str, int, str, str]] = []

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]

    for i, r in enumerate(rows("aime24.jsonl")):
        out.append(("aime24", i, str(r["answer"]).strip(), str(r["answer"]).strip()))
    for i, r in enumerate(rows("amc23.jsonl")):
        a = r["answer"]
        g = str(int(a)) if isinstance(a, float) and a.is_integer() else str(a)
        out.append(("amc23", i, g, g))
    for i, r in enumerate(rows("math500.jsonl")):
        a = str(r["answer"]).strip()
        special = "," in a or "\\text" in a or "[" in a or "(" in a or "\\in" in a
        if i % 4 == 0 or special:
            out.append(("math500", i, a, r["solution"]))
    for i, r in enumerate(rows("gsm8k_test.jsonl")):
        if i % 25 == 0:
            g = r["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            out.append(("gsm8k", i, g, g))
    return out


def _wrong(gold: str) -> str:
    if re.fullmatch(r"-?\d+", gold):
        return str(int(gold) + 7)
    return f"{gold}+1" if len(gold) < 40 else "0"


def make_cases(seed: int = 30) -> list[Case]:
    """The fixed case list (deterministic in ``seed``)."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for bench, i, g, lg in _golds():
        w = _wrong(g)
        is_int = re.fullmatch(r"-?\d+", g) is not None
        shapes = {
            "boxed": f"We simplify step by step.\n\nSo the final answer is $\\boxed{{{g}}}$.",
            "boxed_wrong": f"Carrying the computation through, the result is $\\boxed{{{w}}}$.",
            "unboxed": f"Adding these up, the final answer is {g}.",
            "think_wrapped": f"<think>Maybe it is \\boxed{{{w}}}? No, recheck.</think>\nThe answer is $\\boxed{{{g}}}$.",
            "same_box_twice": f"First pass gives $\\boxed{{{g}}}$; double-checking, still $\\boxed{{{g}}}$.",
            "corrected_box": f"I get $\\boxed{{{w}}}$. Wait, that is wrong. Correcting: $\\boxed{{{g}}}$.",
            "corrected_box_plain": f"I get \\boxed{{{w}}}. Wait, that is wrong. Correcting: \\boxed{{{g}}}.",
            "think_then_unboxed": f"<think>So it is \\boxed{{{w}}}? Check again.</think>\nThe final answer is {g}.",
            "truncated_box": f"Therefore the answer is $\\boxed{{{g}",
            "truncated_text": f"... so the count is {g}. Let me check {g} more carefully and",
        }
        if is_int:
            shapes["dfrac_decimal"] = f"The answer is $\\boxed{{{g}.0}}$."
            shapes["units"] = f"The total is $\\boxed{{{g}\\text{{ dollars}}}}$."
            shapes["dollar_sign"] = f"The total is $\\boxed{{\\${g}}}$."
            shapes["percent"] = f"The rate is $\\boxed{{{g}\\%}}$."
            shapes["degrees"] = f"The angle is $\\boxed{{{g}^\\circ}}$."
        if "," in g and "\\" not in g and "(" not in g and "[" not in g:
            parts = [p.strip() for p in g.split(",")]
            shapes["multi_box"] = "The solutions are " + " and ".join(f"$x=\\boxed{{{p}}}$" for p in parts) + "."
        keep = sorted(shapes)
        if not (bench == "math500" and ("," in g or "[" in g or "\\text" in g)):
            keep = sorted(rng.sample(keep, k=min(len(keep), 6)))
        for shape in keep:
            cases.append(Case(f"{bench}/{i}/{shape}", bench, g, shapes[shape], shape, lg))
    return cases


def remove_reasoning_tags(text: str, tag_pairs: tuple[tuple[str, str], ...] = (("<think>", "</think>"),)) -> str:
    """lighteval ``src/lighteval/utils/utils.py`` ``remove_reasoning_tags`` (written out here so the
    reference does not use our own helper)."""
    for start_tag, end_tag in tag_pairs:
        while start_tag in text and end_tag in text:
            start = text.find(start_tag)
            end = text.find(end_tag, start)
            if start == -1 or end == -1:
                break
            text = text[:start] + text[end + len(end_tag):]
    return text


def lighteval_score(completion: str, gold: str) -> float:
    """lighteval 0.13 ``pass_at_k_math`` (k=1, n=1) on one completion (see the module docstring)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    targets = [ExprExtractionConfig(), LatexExtractionConfig()]
    pred = remove_reasoning_tags(completion).strip()  # PassAtK(strip_strings=True)
    gold = gold.strip()
    preds = parse(pred, extraction_config=targets, fallback_mode="first_match", extraction_mode="any_match",
                  parsing_timeout=5)
    golds = parse(gold, extraction_config=targets, fallback_mode="first_match", extraction_mode="any_match",
                  parsing_timeout=5)
    if not golds:
        golds = [gold]
    return 1.0 if preds and verify(golds, preds, float_rounding=6, timeout_seconds=5) else 0.0


def reference_scores(cases: list[Case]) -> list[float]:
    """lighteval's verdict on every case (in this process, main thread: Math-Verify's alarms work)."""
    return [lighteval_score(c.completion, c.lighteval_gold) for c in cases]


def our_scores(cases: list[Case], scorer: str) -> list[float | None]:
    """Our verdicts through the evaluation path (worker pool, gold normalisation)."""
    from adaclip_rl.rewards.math import verify_math_answers

    texts, golds = [c.completion for c in cases], [c.gold for c in cases]
    if scorer == "before-issue-30":  # the scorer as it was (no scorer argument), for the report
        return verify_math_answers(texts, golds)
    return verify_math_answers(texts, golds, scorer=scorer)


def reason(case: Case) -> str:
    """Why lighteval and the default scorer differ on ``case`` (classified, not guessed per row)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    bare = parse(case.lighteval_gold, [ExprExtractionConfig(), LatexExtractionConfig()])
    wrapped = parse(f"${case.gold}$", [LatexExtractionConfig(), ExprExtractionConfig()])
    if not bare or not wrapped or not verify(wrapped, bare) or not verify(bare, wrapped):
        return "gold: lighteval reads the bare gold with ExprExtractionConfig first and gets part of it"
    if case.shape in ("truncated_box",):
        return "unterminated box: lighteval's plain-box pattern reads it, we skip it"
    return f"completion shape {case.shape}"


def disagreement_table(cases: list[Case], ref: list[float], ours: list[float | None]) -> list[str]:
    """Markdown rows of the cases where the two verdicts differ, with the reason."""
    rows = ["| case | gold | completion | lighteval | ours | reason |", "|---|---|---|---|---|---|"]
    for c, r, o in zip(cases, ref, ours, strict=True):
        if r != o:
            comp = c.completion.replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{c.id}` | `{c.gold}` | `{comp}` | {r:.0f} | {o:.0f} | {reason(c)} |")
    return rows


def main() -> int:
    cases = make_cases()
    ref = reference_scores(cases)
    for scorer in ("lighteval", "adaclip"):
        ours = our_scores(cases, scorer)
        bad = sum(r != o for r, o in zip(ref, ours, strict=True))
        print(f"\n## scorer={scorer}: {len(cases)} completions, agreement {1 - bad / len(cases):.4f} "
              f"({bad} disagreements)\n")
        print("\n".join(disagreement_table(cases, ref, ours)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
