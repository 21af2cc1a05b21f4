"""A griffe extension for the API reference: difflab's docstrings use a few reStructuredText
idioms (double-backtick literals, :class:`roles`, simple tables, underlined headings, ``::``
blocks) that mkdocstrings would otherwise render as plain Markdown. This rewrites them into
Markdown while the site is built; the docstrings in the code stay as they are."""

from __future__ import annotations

import re

import griffe

BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
UNDERLINE = re.compile(r"^\s*(-{3,}|={3,}|~{3,})\s*$")
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
CODE_SPAN = re.compile(r"(`[^`]*`)")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.split('.')[-1] if tilde else target}`"


def _plain(line: str, pad: bool) -> str:
    """A line without its markup; in a table, padded so that the columns stay aligned."""
    line = ROLE.sub(lambda m: m.group(2) + " " * (len(m.group(0)) - len(m.group(2))) if pad else m.group(2), line)
    return re.sub(r"``([^`]+)``", lambda m: m.group(1) + ("    " if pad else ""), line)


def _fence(block: list[str], indent: str, pad: bool = True) -> list[str]:
    return ["", f"{indent}```text", *(_plain(line, pad) for line in block), f"{indent}```", ""]


def _tables(lines: list[str]) -> list[str]:
    """RST simple tables -> fenced text blocks (without their border lines)."""
    out, i = [], 0
    while i < len(lines):
        if not BORDER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        j, body = i + 1, []
        while j < len(lines):
            if BORDER.match(lines[j]) and (j + 1 == len(lines) or not lines[j + 1].strip()):
                break                          # the closing border: followed by a blank line or the end
            if not BORDER.match(lines[j]):
                body.append(lines[j])
            j += 1
        out += _fence(body, re.match(r"\s*", lines[i]).group(0))
        i = j + 1
    return out


def _headings(lines: list[str]) -> list[str]:
    """An underlined heading becomes bold; an aligned definition list right under it is fenced."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if (UNDERLINE.match(line) and not BORDER.match(line) and out and out[-1].strip()
                and abs(len(line.strip()) - len(out[-1].strip())) <= 2):
            out[-1] = f"**{out[-1].strip()}**"
            j = i + 1
            block = []
            while j < len(lines) and lines[j].strip():
                block.append(lines[j])
                j += 1
            if block and 2 * sum(bool(re.search(r"\S\s{2,}\S", b)) for b in block) >= len(block):
                out += _fence(block, "", pad=False)
                i = j
            else:
                i += 1
            continue
        out.append(line)
        i += 1
    return out


def _escape_brackets(text: str) -> str:
    """Square brackets outside code spans are text, not Markdown link references."""
    out = []
    for line in text.split("\n"):
        if line.startswith("    ") or line.lstrip().startswith("```"):
            out.append(line)
            continue
        parts = CODE_SPAN.split(line)
        out.append("".join(p if p.startswith("`") else p.replace("[", r"\[").replace("]", r"\]") for p in parts))
    return "\n".join(out)


def _inline(text: str) -> str:
    text = ROLE.sub(_role, text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r"(\S)::[ \t]*$", r"\1:", text, flags=re.M)   # "the signature::" -> "the signature:"
    text = re.sub(r"^[ \t]*::[ \t]*$", "", text, flags=re.M)
    return _escape_brackets(text)


def rst_to_markdown(text: str) -> str:
    lines = _headings(_tables(text.split("\n")))
    fenced, result, block = False, [], []
    for line in lines:                      # inline markup is converted outside fenced blocks only
        if line.lstrip().startswith("```"):
            if not fenced:
                result.append(_inline("\n".join(block)))
                block = []
            result.append(line)
            fenced = not fenced
        elif fenced:
            result.append(line)
        else:
            block.append(line)
    result.append(_inline("\n".join(block)))
    return "\n".join(result)


class RstDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
