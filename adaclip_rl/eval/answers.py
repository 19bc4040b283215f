"""Answer keys for majority voting: spellings of one answer map to one key.

maj@k groups the samples of a problem by their final answer and takes the largest group. Raw
strings are the wrong groups: ``\\$18``, ``18``, ``18.00``, ``18\\text{ dollars}`` are one answer
that each scores correct, and voting on raw strings lets two identical wrong answers beat three
right ones. :func:`answer_key` normalises an extracted answer in two steps:

1. the rules of Hendrycks et al.'s ``_strip_string`` (MATH, ``modeling/math_equivalence.py``
   in github.com/hendrycks/math; the same rules start Qwen2.5-Math's ``strip_string`` in
   ``evaluation/parser.py``): drop line breaks, ``\\!``, ``\\left``/``\\right``, degree marks
   (``^\\circ``), ``\\$``, units after ``\\text{ ``, percent signs and spaces; ``tfrac``/``dfrac``
   -> ``frac``; ``\\frac12`` -> ``\\frac{1}{2}``; ``\\sqrt3`` -> ``\\sqrt{3}``; a leading
   ``x =`` with a name of at most two characters removed; a leading ``.5`` -> ``0.5``;
2. additions in the spirit of Qwen2.5-Math's version: a trailing ``\\text{...}`` /
   ``\\mbox{...}`` word (``18\\text{dollars}``), ``\\text{(C)}`` -> ``(C)``, surrounding ``$``,
   a final period, thousands separators; then a value that is an exact rational number -
   a decimal (``18.00``, ``025``), an integer ratio ``a/b`` or ``\\frac{a}{b}`` - is written as
   its reduced fraction (``18``, ``25``, ``1/2``), so ``0.5`` and ``\\frac{1}{2}`` share a key.

Keys are for grouping only; correctness always comes from the verifier (Math-Verify).
"""

from __future__ import annotations

import re
from fractions import Fraction

_TEXT_UNITS = re.compile(r"\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\s*\{(.*)\}$")
_DECIMAL = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_RATIO = re.compile(r"^([-+]?\d+)/(\d+)$")
_FRAC = re.compile(r"^([-+]?)\\frac\{([-+]?\d+)\}\{(\d+)\}$")


def _brace_short_args(text: str, command: str, n_args: int) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``: a one-character argument
    written without braces gets them (Hendrycks ``_fix_fracs`` / ``_fix_sqrt``)."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find(command, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : j + len(command)])
        k = j + len(command)
        for _ in range(n_args):
            if k < len(text) and text[k] not in "{\\ ":
                out.append("{" + text[k] + "}")
                k += 1
            else:
                break
        i = k


def strip_answer(text: str) -> str:
    """Step 1 and 2 of the module docstring, without the numeric canonical form."""
    s = text.strip()
    for _ in range(2):
        s = s.strip().strip("$").strip()
        while s.endswith((".", ",", ";")) and not s.endswith("\\."):
            s = s[:-1].rstrip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\$", "").lstrip("$")
    if "\\text{ " in s:  # Hendrycks: "\text{ " only ever introduces units
        s = s.split("\\text{ ", 1)[0]
    unit = _TEXT_UNITS.search(s)
    if unit is not None and s[: unit.start()].strip():  # "18\text{dollars}"; a bare \text{even} stays
        s = s[: unit.start()].strip()
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:
        s = parts[1]
    s = _brace_short_args(s, "\\sqrt", 1)
    s = s.replace(" ", "")
    s = _brace_short_args(s, "\\frac", 2)
    wrap = _TEXT_WRAP.match(s)
    if wrap is not None:
        s = wrap.group(1)
    return s


def _as_fraction(s: str) -> Fraction | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        return Fraction(s)
    m = _RATIO.match(s)
    if m is not None and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = _FRAC.match(s)
    if m is not None and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) == "-" else value
    return None


def answer_key(text: str | None) -> str | None:
    """Majority-vote key of an extracted answer (None or empty -> None: the sample does not vote).

    Examples: ``\\$18``, ``18``, ``18.00``, ``18\\text{dollars}``, ``18\\text{ dollars}`` -> ``18``;
    ``0.5``, ``\\frac{1}{2}``, ``\\dfrac12``, ``1/2`` -> ``1/2``; ``025`` -> ``25``;
    ``90^\\circ`` -> ``90``; ``1,234`` -> ``1234``.
    """
    if text is None:
        return None
    s = strip_answer(text)
    if not s:
        return None
    value = _as_fraction(s)
    if value is not None:
        return str(value)
    return s
