"""Chat-template helpers for TRL's asynchronous rollout worker.

The worker renders every prompt through the tokenizer's chat template and parses each completion
with the tokenizer's ``response_template``; a home-made tokenizer (the tiny task model's) has
neither, and a plain-text dataset has no conversational prompts.
"""

from __future__ import annotations

__all__ = ["PLAIN_CHAT_TEMPLATE", "conversational_prompts", "set_plain_response_template"]


# Response parsing for a chat template that renders only the messages' text (``{{ content }}``):
# the completion is everything up to the end-of-text token.
_PLAIN_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "",
    "fields": {"content": {"close_pattern": r"<\|endoftext\|>\s*|$", "content": "text"}},
}
PLAIN_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def set_plain_response_template(tokenizer, chat_template: str = PLAIN_CHAT_TEMPLATE):
    """Give a home-made tokenizer (the tiny task model's) a chat template that renders the prompt's
    text as is and the response template TRL's rollout worker needs to parse completions."""
    tokenizer.chat_template = chat_template
    tokenizer.response_template = dict(_PLAIN_RESPONSE_TEMPLATE)
    return tokenizer


def conversational_prompts(dataset):
    """``dataset`` with plain-text prompts wrapped as one user message: TRL's rollout worker renders
    every prompt through the chat template, so it needs conversational prompts."""
    if len(dataset) and isinstance(dataset[0]["prompt"], str):
        return dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    return dataset
