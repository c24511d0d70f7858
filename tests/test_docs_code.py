"""Every Python code block of README.md and docs/*.md runs as it is shown.

The convention (for everyone writing docs):

* Each fenced block opened with three backticks and ``python`` is executed. The blocks of one
  page run in order, in one fresh namespace, from a temporary working directory, so a page
  can define ``x`` in one block and use it in the next, exactly as a reader would paste them.
* A block that cannot run alone (a fragment of a longer program) is marked on the line just
  before its fence with ``<!-- fragment: examples/<script>.py -->``. It is skipped here, and
  instead the linked script must exist, be linked from the same page, and be run by
  ``tests/test_examples.py`` (or, for the structured-latent recipes,
  ``tests/test_recipes_structured.py``).
* Keep blocks fast: tiny tensors, a few steps.
* Keep ``python`` and ``bash`` lines within 88 characters: longer ones scroll out of view in
  the site's code column at a 1280-pixel window.

The table of ``docs/errors.md`` is checked here too: it lists exactly the keys of the
catalogue of bad inputs (`_catalogue.catalogue`), each once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import matplotlib
import pytest
from _catalogue import catalogue

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a thread pool only waits

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
FRAGMENT = re.compile(r"^\s*<!-- fragment: (?P<script>examples/[\w/.-]+\.py) -->\s*$")


WIDTH = 88


class Block(NamedTuple):
    line: int  # 1-based line of the opening fence
    code: str
    fragment_of: str | None


def python_blocks(text: str) -> list[Block]:
    """The ``python`` blocks of a Markdown page, with their fragment markers."""
    lines, blocks, index = text.splitlines(), [], 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if not opened or not opened["lang"]:
            index += 1
            continue
        indent, body, start = len(opened["indent"]), [], index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][indent:])
            index += 1
        index += 1
        if opened["lang"] == "python":
            marker = FRAGMENT.match(lines[start - 1]) if start else None
            script = marker["script"] if marker else None
            blocks.append(Block(start + 1, "\n".join(body) + "\n", script))
    return blocks


def test_the_block_finder_sees_fragments_and_indented_blocks() -> None:
    page = (
        "text\n<!-- fragment: examples/quickstart.py -->\n```python\nfoo(x)\n```\n"
        "* item\n\n    ```python\n    y = 1\n    ```\n```bash\nls\n```\n"
    )
    assert python_blocks(page) == [
        Block(3, "foo(x)\n", "examples/quickstart.py"),
        Block(8, "y = 1\n", None),
    ]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_python_block_runs_in_order(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for block in python_blocks(page.read_text(encoding="utf-8")):
        if block.fragment_of is not None:
            continue
        try:
            exec(compile(block.code, f"{_name(page)}:{block.line}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"{_name(page)}, block at line {block.line}: {error!r}")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_fragments_link_a_script_that_the_examples_test_runs(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    tested = "".join(
        (ROOT / "tests" / name).read_text(encoding="utf-8")
        for name in ("test_examples.py", "test_recipes_structured.py")
    )
    for block in python_blocks(text):
        if block.fragment_of is None:
            continue
        script = ROOT / block.fragment_of
        assert script.is_file(), f"{_name(page)}:{block.line}: {block.fragment_of} is missing"
        assert script.name in text.replace(block.code, ""), (
            f"{_name(page)}:{block.line}: the page must link {block.fragment_of}"
        )
        assert f'"{script.stem}"' in tested or script.name in tested, (
            f"{block.fragment_of} is not run by tests/test_examples.py or "
            "tests/test_recipes_structured.py"
        )


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_code_lines_fit_the_page(page: Path) -> None:
    lines, inside, long = page.read_text(encoding="utf-8").splitlines(), None, []
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence or line.strip() == "```":
            inside = None if inside is not None else (fence["lang"] if fence else "")
        elif inside in ("python", "bash") and len(line) > WIDTH:
            long.append(f"{_name(page)}:{number} has {len(line)} characters")
    assert long == []


# --- docs/errors.md tabulates exactly the catalogue of bad inputs -------------------------
# The catalogue is split by module (``BAD_INPUTS`` of each file in `_catalogue.PARTS`);
# its keys, gathered from every part, must each appear once in the table of docs/errors.md.

DOCS = ROOT / "docs" / "errors.md"


def _area(case: str) -> str:
    return case.split(":", 1)[0] if ":" in case else "loss"


def test_catalogue_is_large_and_covers_every_area() -> None:
    cases = catalogue()
    areas = [_area(case) for case in cases]
    counts = {area: areas.count(area) for area in set(areas)}
    assert len(cases) >= 70
    for area in ("loss", "helper", "marginal", "objective", "controller", "schedule"):
        assert counts[area] >= 4, (area, counts)
    for area in ("diagnostics", "metric", "mutual information", "iwae", "plot", "cli"):
        assert counts[area] >= 3, (area, counts)


def _documented_cases() -> list[str]:
    """The "bad input" column of every row of the table in docs/errors.md."""
    rows = []
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[1] not in ("bad input", "---"):
            rows.append(cells[1])
    return rows


def test_docs_table_lists_exactly_the_catalogue() -> None:
    documented, cases = _documented_cases(), catalogue()
    assert len(documented) == len(set(documented)), "a case is listed twice in docs/errors.md"
    assert sorted(set(cases) - set(documented)) == [], "cases missing from docs/errors.md"
    assert sorted(set(documented) - set(cases)) == [], "docs/errors.md lists unknown cases"
