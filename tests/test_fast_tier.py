"""The fast tier's lists name real files and tests (a renamed file would otherwise drop out silently)."""

from __future__ import annotations

from fast_tier import FAST_FILES, SLOW_IN_FAST_FILES, TESTS


def test_every_fast_file_exists_and_every_slow_prefix_is_inside_one():
    assert sorted(f for f in FAST_FILES if not (TESTS / f).is_file()) == []
    for prefix in SLOW_IN_FAST_FILES:
        path, _, name = prefix.partition("::")
        assert path in FAST_FILES, prefix
        assert f"def {name.partition('[')[0]}" in (TESTS / path).read_text(), prefix
