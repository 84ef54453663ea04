"""textkit: Celeriac's first-party Python plugin, text processing with the standard library.

Built by `make example-plugins` with `celeriac plugins build plugins/textkit`.
"""

import collections
import difflib
import re
import textwrap
import unicodedata

from celeriac import Handler, task  # noqa: F401 - Handler is what the worker calls

WORD = re.compile(r"\w+", re.UNICODE)


@task
def words(text: str, top: int = 0) -> dict:
    "Count the words of a text (the `top` most common if given)."
    counts = collections.Counter(WORD.findall(text.lower()))
    return dict(counts.most_common(top) if top else counts)


@task
def slugify(text: str) -> str:
    "A URL slug: ASCII, lowercase, words joined by hyphens."
    if not text.strip():
        raise ValueError("nothing to slugify")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(WORD.findall(ascii_text.lower())).replace("_", "-")


@task
def wrap(text: str, width: int = 70) -> list:
    "Wrap a text into lines of at most `width` characters."
    if width < 1:
        raise ValueError(f"width must be positive, not {width}")
    return textwrap.wrap(text, width)


@task
def diff(before: str, after: str) -> str:
    "A unified diff of two texts."
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", lineterm="")
    return "\n".join(lines)
