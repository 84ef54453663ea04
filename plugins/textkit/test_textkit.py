"""The tasks as plain functions (`pytest plugins/textkit`, with sdk/python on the path)."""

import pytest

from textkit import diff, slugify, words, wrap


def test_words():
    assert words("a b, A!") == {"a": 2, "b": 1}
    assert words("x y x z x y", top=1) == {"x": 3}


def test_slugify():
    assert slugify("Héllo, Wörld!") == "hello-world"
    with pytest.raises(ValueError):
        slugify("  ")


def test_wrap_and_diff():
    assert wrap("one two three", 7) == ["one two", "three"]
    assert "+b" in diff("a", "b")
