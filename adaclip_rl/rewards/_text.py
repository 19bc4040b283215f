"""Small text helpers shared by the reward functions (no heavy imports)."""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """Return the text of one TRL completion.

    TRL passes completions either as plain strings (standard format) or as a list of chat
    messages (conversational format, ``[{"role": "assistant", "content": ...}]``). For the
    conversational format the content of the last assistant message is used; a message content
    given as a list of parts (``[{"type": "text", "text": ...}]``) is joined.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        chosen = assistant or messages
        if not chosen:
            return ""
        return _content_text(chosen[-1].get("content", ""))
    return str(completion)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Markdown code fences of ``text`` as ``(language, body)`` pairs, in linear time.

    A fence opens on a line whose first non-blank characters are three or more backticks (or
    tildes) followed by an optional info string (its first word is the language; a backtick
    fence's info string holds no backtick), or on a line ending in such a run plus at most one
    word (``Here it is: ```python``). It closes at the next line holding only a run of the same
    character at least as long (surrounding blanks allowed); an unclosed final fence (a truncated
    completion) runs to the end of the text. A closing run inside a code line does not close
    the block.

    The scan visits each line once and each character a bounded number of times, so an
    adversarial completion (an unterminated fence followed by a long blank run, thousands of
    backticks) costs time linear in its length; a backtracking regular expression here held
    the caller for seconds on 100 kB.
    """
    blocks: list[tuple[str, str]] = []
    n = len(text)
    pos = 0
    fence: tuple[str, int] | None = None  # (character, run length) of the open fence
    lang = ""
    body_start = 0
    while pos <= n:
        end = text.find("\n", pos)
        if end < 0:
            end = n
        line = text[pos:end]
        nxt = end + 1
        if fence is None:
            opened = _opener(line)
            if opened is not None:
                fence = (opened[0], opened[1])
                lang = opened[2]
                body_start = min(nxt, n)
        else:
            stripped = line.strip(" \t\r")
            ch, k = fence
            if len(stripped) >= k and stripped == ch * len(stripped):
                blocks.append((lang, text[body_start:pos]))
                fence = None
        if end >= n:
            break
        pos = nxt
    if fence is not None:
        blocks.append((lang, text[body_start:]))
    return blocks


def _opener(line: str) -> tuple[str, int, str] | None:
    """``(fence character, run length, language)`` if ``line`` opens a fence."""
    stripped = line.lstrip(" \t")
    for ch in ("`", "~"):
        if stripped.startswith(ch * 3):
            k = len(stripped) - len(stripped.lstrip(ch))
            info = stripped[k:].strip()
            if ch == "`" and "`" in info:
                return None  # inline code such as ```x``` on one line
            return ch, k, info.split()[0] if info else ""
    # a run at the end of prose: "Here it is: ```python"
    idx = line.find("```")
    if idx > 0:
        k = len(line[idx:]) - len(line[idx:].lstrip("`"))
        info = line[idx + k :].strip()
        if "`" not in info and len(info.split()) <= 1:
            return "`", k, info
    return None


REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"),)


def strip_reasoning(text: str, tag_pairs: tuple[tuple[str, str], ...] = REASONING_TAGS) -> str:
    """Remove every complete reasoning block (``<think>...</think>``) from ``text``.

    The same rule as lighteval's ``remove_reasoning_tags``
    (``src/lighteval/utils/utils.py``, applied to every response by ``Pipeline._post_process_outputs``
    when ``--remove-reasoning-tags`` is on, its default): repeatedly cut from the first start tag to
    the first end tag after it; an unclosed ``<think>`` (a truncated reasoning) is left as it is, so
    a box inside it still counts, as in lighteval.
    """
    result = text
    for start_tag, end_tag in tag_pairs:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start == -1 or end == -1:
                break
            result = result[:start] + result[end + len(end_tag):]
    return result
