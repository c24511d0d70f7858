""".ci/check_site.py finds each class of rendering bug seen in the built site, and only those."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

scan = runpy.run_path(str(Path(__file__).resolve().parents[1] / ".ci" / "check_site.py"))["scan"]


def _page(body: str) -> str:
    return f'<html><article class="md-content__inner md-typeset">{body}</article></html>'


@pytest.mark.parametrize(
    ("body", "finding"),
    [
        ("<p>weighted by p<em>(x) and e(z|x) with p</em>(x)</p>", "emphasis opens inside a word"),
        ("<p>the rate $R$ in nats</p>", "raw '$'"),
        ("<p>the rate \\(R\\) in nats</p>", "raw '\\\\('"),
        ("<p>set kld\\_weight</p>", "raw '\\\\_'"),
        ("<p>in [0, 2**64)</p>", "raw '*'"),
        ("<p><code>bits = D / (\\ln 2 \\cdot n)</code></p>", "LaTeX in inline code"),
        (
            '<p><span class="arithmatex">\\(\\text{kld\\_weight}\\)</span></p>',
            "inside \\text{} shows a backslash",
        ),
    ],
)
def test_each_bug_is_found(body: str, finding: str) -> None:
    found = scan(_page(body))
    assert any(finding in f for f in found), found


def test_clean_markup_passes() -> None:
    body = (
        '<p>The <em>rate</em> <span class="arithmatex">\\(R = \\mathrm{KL}\\)</span>, '
        "<strong>in nats</strong>; <code>2**64</code> and <code>$ rdloss demo</code>.</p>"
        "<pre><code>x = a * b  # $HOME \\(</code></pre>"
        '<p><a class="headerlink" href="#x">¶</a> a table | cell</p>'
        "<p>outside the article: nothing</p>"
    )
    assert scan(_page(body) + "<p>$ raw after the article</p>") == []
