"""The user pages read as product documentation, and each measured number has one home.

A reader of README.md and docs/ should not meet the project's development history ("added
by issue 13", "before the last round of work"), and a figure measured once (the demo's
time, the mixture density's speed-up) is stated on one page and linked from the others,
so that it cannot drift apart between pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "javascripts" not in p.parts]  # vendored MathJax notes

# Wording of a development log, not of a manual.
DEV_LOG = re.compile(
    r"issue \d+|hostile pass|hostile cases|round of work|last round|\d+-minute budget"
    r"|this session|in this PR",
    re.IGNORECASE,
)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize(
    "page",
    PAGES,
    ids=_name,
)
def test_user_pages_have_no_development_log_wording(page: Path) -> None:
    found = [
        f"{_name(page)}:{n}: {m.group(0)!r}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for m in DEV_LOG.finditer(line)
    ]
    assert found == []


def _pages_matching(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {p.name for p in PAGES if rx.search(p.read_text(encoding="utf-8"))}


def test_the_mixture_speed_up_is_stated_on_the_benchmarks_page_only() -> None:
    # "36.4\u00d7 faster" and the like; other pages link to Benchmarks#mixture-log-density.
    assert _pages_matching(r"\d+(\.\d+)?(\u00d7|x) faster") <= {"benchmarks.md"}
    linked = _pages_matching(r"benchmarks\.md#mixture-log-density")
    assert {"marginals.md", "robustness.md"} <= linked


def test_the_demo_time_is_measured_on_one_page_and_linked_from_the_others() -> None:
    # The measurement (seconds, machine, load) lives in Reproducing's cost section.
    assert _pages_matching(r"`rdloss demo` with its defaults .* took \*\*\d+ s\*\*") == {
        "reproducing.md"
    }
    assert _pages_matching(r"about 2 minutes") == set()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert "reproducing/#running-it-yourself-and-cost" in readme
    assert "reproducing.md#running-it-yourself-and-cost" in home


def test_install_hints_quote_their_extras() -> None:
    # zsh expands an unquoted rdloss[plot] as a glob and fails: every hint quotes it.
    unquoted = {
        f"{_name(p)}:{n}"
        for p in PAGES
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"pip install (-e )?[^\"'\s]*\[", line)
    }
    assert unquoted == set()


def test_every_results_csv_key_is_documented_once() -> None:
    from rdloss.demo.results import COLUMNS

    text = (ROOT / "docs" / "reproducing.md").read_text(encoding="utf-8")
    section = text.split("## The table and the files", 1)[1].split("\n## ", 1)[0]
    documented = [
        key
        for line in section.splitlines()
        if line.startswith("| `")
        for key in re.findall(r"`(\w+)`", line.split("|")[1])
    ]
    assert sorted(documented) == sorted(COLUMNS)
