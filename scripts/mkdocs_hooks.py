"""MkDocs hooks: the docs site's generated tables, filled in as each page is built.

A page asks for generated content with a marker on a line of its own:

    <!-- settings -->                  every setting, from the settings classes (gen_config_docs)
    <!-- bench: FILE.json -->          one results file's tables, from bench/results (gen_bench_docs)

Generating at build time means the pages cannot fall behind the code or the results files, and
`mkdocs build --strict` (scripts/test.sh) fails on a marker that names nothing, a setting without
a description or a results file no renderer knows.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is a folder of scripts, not a package

import gen_bench_docs  # noqa: E402
import gen_config_docs  # noqa: E402

MARKER = re.compile(r"^<!-- (settings|bench: (?P<file>[\w.-]+\.json)) -->$", re.MULTILINE)


def _expand(match: re.Match[str]) -> str:
    if match["file"] is None:
        return gen_config_docs.configuration_reference()
    path = gen_bench_docs.RESULTS / match["file"]
    if not path.is_file():
        raise FileNotFoundError(f"a docs page names {path}, which does not exist")
    return gen_bench_docs.render(path)


def expand_markers(markdown: str) -> str:
    """`markdown` with every marker replaced by what it asks for."""
    return MARKER.sub(_expand, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand_markers(markdown)
