r"""Scan a built mkdocs site for Markdown that did not render: ``python .ci/check_site.py SITE``.

Outside code, math and scripts, visible text must not hold raw ``$`` or ``\(``/``\[``
(math that MathJax never saw), an escaped ``\_`` or ``\*`` (a backslash the reader sees),
or a stray ``*``; emphasis must not open right after a letter (``p*(x) ... e*`` turning
into ``p<em>(x) ... e</em>``); inline code must not hold LaTeX commands (``\ln 2`` shown
raw); math must not hold ``\_`` inside ``\text{}`` (MathJax shows the backslash). Exit 1
and one line per finding if anything is found.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

SKIP = {"code", "pre", "script", "style", "svg", "math", "textarea"}
RAW = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]|\\_|\\\*|\*")
LATEX_IN_CODE = re.compile(r"\\(ln|text|mathrm|mathbb|frac|cdot|sum|log|beta|sigma)\b")
ESCAPE_IN_TEXT = re.compile(r"\\text\{[^}]*\\_")


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, skipped)
        self.text = ""  # visible text so far, to see what precedes an <em>
        self.found: list[str] = []

    def _skipping(self) -> bool:
        return any(skipped for _, skipped in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        skipped = tag in SKIP or "arithmatex" in classes or "headerlink" in classes
        if tag in ("em", "strong") and not self._skipping() and re.search(r"\w\Z", self.text):
            self.found.append(f"emphasis opens inside a word: ...{self.text[-30:]!r}<{tag}>")
        if tag not in ("br", "img", "hr", "input", "meta", "link"):
            self.stack.append((tag, skipped))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                break

    def handle_data(self, data: str) -> None:
        tags = [tag for tag, _ in self.stack]
        if "code" in tags and "pre" not in tags and LATEX_IN_CODE.search(data):
            self.found.append(f"LaTeX in inline code: {data[:60]!r}")
        if ESCAPE_IN_TEXT.search(data):
            self.found.append(f"\\_ inside \\text{{}} shows a backslash: {data[:60]!r}")
        if self._skipping():
            self.text += " "
            return
        for match in RAW.finditer(data):
            start = max(0, match.start() - 30)
            self.found.append(f"raw {match.group()!r} in text: {data[start : match.end() + 30]!r}")
        self.text = (self.text + data)[-200:]


def scan(html: str) -> list[str]:
    """Findings for one page's HTML (only its main content is scanned)."""
    body = html.split('<article class="md-content__inner', 1)[-1].split("</article>", 1)[0]
    scanner = _Scanner()
    scanner.feed(body)
    return scanner.found


def main(site: str) -> int:
    """Print the findings of every page under ``site``; 1 if there are any, else 0."""
    problems = [
        f"{page.relative_to(site)}: {finding}"
        for page in sorted(Path(site).rglob("*.html"))
        if page.name != "404.html"
        for finding in scan(page.read_text(encoding="utf-8"))
    ]
    print("\n".join(problems) or f"site ok: {site}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
