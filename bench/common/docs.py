"""Writing figures into docs/benchmarks.md: Markdown templates under docs/templates/ filled with str.format, tables,
and the replacement of the one '## ' section a script owns."""

from __future__ import annotations

from pathlib import Path

from . import REPO

DOC_PATH = REPO / "docs" / "benchmarks.md"
TEMPLATES = REPO / "docs" / "templates"


def _template(name: str) -> str:
    """docs/templates/NAME.md without its leading <!-- ... --> comment (which says who fills it, with what)."""
    text = (TEMPLATES / f"{name}.md").read_text(encoding="utf-8")
    if text.startswith("<!--"):
        text = text[text.index("-->") + 3 :].lstrip("\n")
    return text


def template_heading(name: str) -> str:
    """The '## ' heading a template starts with: the section of docs/benchmarks.md it fills."""
    return _template(name).split("\n", 1)[0]


def render(name: str, **fields) -> str:
    """The template NAME filled with `fields` (str.format: '{field}', '{field:,.1f}')."""
    return _template(name).format_map(fields)


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table; `align` has an 'l' or 'r' per column (default: the first left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(row) + " |" for row in rows])


def fmt_sources(hashes: dict[str, str]) -> str:
    """source_hashes() as 'name `prefix`, ...'."""
    return ", ".join(f"{name} `{digest[:8]}`" for name, digest in hashes.items())


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with `heading` (up to the next '## ' heading) by `section`, or append it;
    create the file if missing. Sections stay separated by one blank line; the file ends with one newline."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = section.strip("\n") + "\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
