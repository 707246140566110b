"""Griffe extension: render docstring doctests (``>>>`` blocks) as code.

nnxlike's docstrings carry doctests in their description, as plain text (they are
run by ``pytest --doctest-modules``). Markdown would run their lines together into
one paragraph and read ``[...]`` in outputs as links; this extension wraps each
doctest block (the ``>>>``/``...`` lines and the output lines under them, up to a
blank line) in a ``pycon`` fence before mkdocstrings renders the docstring.
"""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """Wrap every ``>>>`` block of ``text`` in a fenced ``pycon`` code block."""
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.splitlines():
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append(indent + "```")
            in_doctest = False
        if not in_doctest and stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append(indent + "```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
