"""Math-Verify worker process (``python -m adaclip_rl.rewards._math_worker``).

Protocol: JSON lines. The worker first writes ``{"ready": true}``; then for each request
``{"i": id, "p": prediction, "g": gold, "t": timeout_seconds}`` it writes
``{"i": id, "s": score | null, "e": status}`` with status one of ``ok`` (score 0 or 1),
``no_answer`` (nothing parsable in the prediction, score 0), ``gold_unparsable`` (score null)
or ``error`` (an exception inside Math-Verify, score 0). A gold starting with
``LIGHTEVAL_MARK`` (see :mod:`adaclip_rl.rewards.math`) is scored the way lighteval's
extractive-match metric scores it (``_lighteval_score``) instead of the boxed-first default. Math-Verify's ``signal.alarm``
timeouts work here because everything runs in this process's main thread; the parent adds a
hard deadline on top and kills the process if that is exceeded.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import time
from typing import Any

_GOLD_CACHE_SIZE = 4096


def _setup() -> tuple[Any, Any, Any, Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    pred_cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return parse, verify, gold_cfg, pred_cfg


def _inject_fault(pred: str) -> None:
    """Test hook (only with ``ADACLIP_MATH_WORKER_FAULTS=1``): simulate a hang that
    ``signal.alarm`` cannot interrupt, or a crash, to exercise the parent's recovery."""
    if pred == "<<adaclip-fault:hang>>":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(3600)
    elif pred == "<<adaclip-fault:crash>>":
        os._exit(3)


def main() -> None:
    """Serve verification requests from stdin until EOF."""
    # Keep the protocol stream clean: anything printed by libraries goes to stderr.
    protocol_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    from adaclip_rl.rewards._text import strip_reasoning
    from adaclip_rl.rewards.math import LIGHTEVAL_MARK, clean_boxed, extract_all_boxed

    parse, verify, gold_cfg, pred_cfg = _setup()
    gold_cache: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def parse_gold(gold: str, t: int) -> Any:
        if gold in gold_cache:
            gold_cache.move_to_end(gold)
            return gold_cache[gold]
        parsed: Any = []
        for wrapped in (f"${gold}$", f"\\boxed{{{gold}}}", gold):
            try:
                # no string fallback: a gold that yields no expression is reported, not compared as text
                parsed = parse(
                    wrapped, extraction_config=gold_cfg, fallback_mode="no_fallback", parsing_timeout=t
                )
            except Exception:  # noqa: BLE001 - any parser failure means "try the next form"
                parsed = []
            if parsed:
                break
        gold_cache[gold] = parsed
        if len(gold_cache) > _GOLD_CACHE_SIZE:
            gold_cache.popitem(last=False)
        return parsed

    def parse_pred(pred: str, t: int) -> Any:
        # complete <think>...</think> pairs are cut first (lighteval's remove_reasoning_tags)
        text = strip_reasoning(pred)
        boxes = list(dict.fromkeys(c for c in (clean_boxed(b) for b in extract_all_boxed(text)) if c))
        if not boxes:
            return parse(text, extraction_config=pred_cfg, parsing_timeout=t)
        last = parse(f"\\boxed{{{boxes[-1]}}}", extraction_config=pred_cfg, parsing_timeout=t)
        if len(boxes) > 1:
            # Every box counts as Math-Verify counts it: when the boxes hold different values, its
            # own reading of the text decides (boxes joined in one expression - "$x=\\boxed{1}$ or
            # $x=\\boxed{-2}$" - become the set of them; separate answers, the rightmost one);
            # boxes repeating one value (073, \\textbf{(073)}) are that value.
            values: dict[str, Any] = {}
            for box in boxes:
                got = parse(f"\\boxed{{{box}}}", extraction_config=pred_cfg, parsing_timeout=t)
                value = next((x for x in got if not isinstance(x, str)), None)
                if value is not None:
                    values.setdefault(str(value), value)
            if len(values) > 1:
                whole = parse(text, extraction_config=pred_cfg, parsing_timeout=t)
                if any(not isinstance(x, str) for x in whole):
                    return whole
        if last:
            return last
        return parse(text, extraction_config=pred_cfg, parsing_timeout=t)

    le_targets = [ExprExtractionConfig(), LatexExtractionConfig()]
    le_cache: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def lighteval_score(pred: str, gold: str, t: int) -> dict[str, Any]:
        """lighteval 0.13 ``Metrics.pass_at_k_math`` on one sample (metrics.py L469-484):
        reasoning tags removed (utils.py ``remove_reasoning_tags``), strings stripped
        (``PassAtK(strip_strings=True)``), gold and prediction extracted with
        ``[ExprExtractionConfig(), LatexExtractionConfig()]``, ``fallback_mode="first_match"``,
        ``extraction_mode="any_match"`` (dynamic_metrics.py L155-166, L227-238), a gold that
        extracts to nothing kept as its raw string (L241-243), compared with ``precision=6``.
        The gold is read from ``\\boxed{gold}``, as lighteval's MATH-500 task reads it from the
        worked solution's box (``choices=[line["solution"]]``); for a bare integer (AIME, AMC,
        GSM8K, where lighteval reads the bare answer) both readings give the same number."""
        gold = gold.strip()
        if gold not in le_cache:
            le_cache[gold] = parse(f"\\boxed{{{gold}}}", extraction_config=le_targets, fallback_mode="first_match",
                                   extraction_mode="any_match", parsing_timeout=t) or [gold]
            if len(le_cache) > _GOLD_CACHE_SIZE:
                le_cache.popitem(last=False)
        g = le_cache[gold]
        p = parse(strip_reasoning(pred).strip(), extraction_config=le_targets, fallback_mode="first_match",
                  extraction_mode="any_match", parsing_timeout=t)
        if not p:
            return {"s": 0.0, "e": "no_answer"}
        return {"s": 1.0 if verify(g, p, float_rounding=6, timeout_seconds=t) else 0.0, "e": "ok"}

    faults = os.environ.get("ADACLIP_MATH_WORKER_FAULTS") == "1"
    protocol_stream.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        i, pred, gold, t = req["i"], req["p"], req["g"], int(req.get("t", 5))
        if faults:
            _inject_fault(pred)
        try:
            if gold.startswith(LIGHTEVAL_MARK):
                protocol_stream.write(json.dumps({"i": i, **lighteval_score(pred, gold[len(LIGHTEVAL_MARK):], t)}) + "\n")
                continue
            g = parse_gold(gold, t)
            if not g:
                reply = {"i": i, "s": None, "e": "gold_unparsable"}
            else:
                p = parse_pred(pred, t)
                if not p:
                    reply = {"i": i, "s": 0.0, "e": "no_answer"}
                else:
                    ok = verify(g, p, timeout_seconds=t)
                    reply = {"i": i, "s": 1.0 if ok else 0.0, "e": "ok"}
        except Exception as exc:  # noqa: BLE001 - a bad item must not kill the worker
            reply = {"i": i, "s": 0.0, "e": "error", "msg": f"{type(exc).__name__}: {exc}"[:300]}
        protocol_stream.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
