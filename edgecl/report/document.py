"""The document model of a report (sections of tables, notes, code and plots) and its two
renderings: markdown, and a self-contained HTML page (inline CSS, plots as base64 PNGs)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Note:
    text: str
    highlight: bool = False


@dataclass
class Code:
    text: str
    summary: str


@dataclass
class Plot:
    title: str
    png_base64: str


Block = Table | Note | Code | Plot


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---- markdown ----------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _markdown_table(table: Table) -> str:
    lines = [f"**{table.caption}**", ""] if table.caption else []
    lines.append("| " + " | ".join(map(_md_cell, table.headers)) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown_block(block: Block) -> str:
    if isinstance(block, Table):
        return _markdown_table(block)
    if isinstance(block, Code):
        return f"{block.summary}:\n\n```json\n{block.text}\n```"
    if isinstance(block, Plot):
        return ""  # figures only appear in the HTML report
    return block.text


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [text for text in map(_markdown_block, section.blocks) if text]
    return "\n\n".join(parts) + "\n"


# ---- HTML --------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #d8dde6; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; color: #2b4a7a; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d8dde6; padding: .25rem .55rem; }
th { background: #eef2f8; text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; }
tr:nth-child(even) td { background: #f8f9fb; }
.note { color: #5a6475; font-size: .9rem; }
.estimate { background: #fff6e0; border-left: 4px solid #e0a800; padding: .4rem .7rem; }
.scroll { overflow-x: auto; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; }
figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption { font-size: .85rem; color: #5a6475; }
pre { background: #f4f6f9; padding: .7rem; overflow-x: auto; font-size: .8rem; }
"""


def _html_table(table: Table) -> str:
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in table.rows
    )
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Code):
        return (
            f"<details><summary>{html.escape(block.summary)}</summary>"
            f"<pre>{html.escape(block.text)}</pre></details>"
        )
    if isinstance(block, Plot):
        title = html.escape(block.title)
        return (
            f'<figure><img alt="{title}" src="data:image/png;base64,{block.png_base64}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    css_class = "note estimate" if block.highlight else "note"
    return f'<p class="{css_class}">{html.escape(block.text)}</p>'


def render_html(title: str, sections: Sequence[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
