"""MkDocs hook: publish the tutorials (``../tutorials/*.py``) as pages.

The tutorials are programs kept next to the package and run by the test suite;
this hook adds each one (a ``.py`` file with ``# %%`` cells) to the site's files
under ``tutorials/`` before mkdocs-jupyter turns them into notebook pages.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


@event_priority(100)  # run before the mkdocs-jupyter plugin sees the files
def on_files(files, config):
    for path in sorted((ROOT / "tutorials").glob("*.py")):
        if "\n# %%" in path.read_text(encoding="utf-8"):
            files.append(
                File(
                    f"tutorials/{path.name}",
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files
