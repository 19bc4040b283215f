"""mkdocs hook: links from a page to a source file of the repository (``../adaclip_rl/x.py``).

The design notes link to the code they describe; those links work on GitHub but point outside
``docs/``, which ``mkdocs build --strict`` reports. This hook turns a link whose target exists in
the repository outside ``docs/`` into the link text in code style (or a link to ``repo_url`` when
the site sets one), so the strict build still fails on every other broken link.
"""

from __future__ import annotations

import re
from pathlib import Path

_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((\.\./[^)#\s]+)(#[^)]*)?\)")


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = docs_dir.parent
    page_dir = (docs_dir / page.file.src_path).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def replace(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        path = (page_dir / target).resolve()
        if docs_dir in path.parents or not path.exists() or repo not in path.parents:
            return match.group(0)  # inside docs/ or missing: mkdocs checks it
        rel = path.relative_to(repo).as_posix()
        if repo_url:
            return f"[{text}]({repo_url}/blob/main/{rel})"
        return text if text.startswith("`") else f"{text} (`{rel}`)"

    return _LINK.sub(replace, markdown)
