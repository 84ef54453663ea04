"""The tasks are plain functions: test them with pytest, no Wasm needed."""

import pytest

from {{name}} import shout


def test_shout():
    assert shout("hello") == "HELLO!"


def test_shout_refuses_nothing():
    with pytest.raises(ValueError, match="nothing to shout"):
        shout("")
