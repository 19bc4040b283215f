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
