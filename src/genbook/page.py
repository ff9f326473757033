"""Code that fits the book's page: the package is formatted at 140 columns, the book's code column holds about 88.

:func:`fit_to_page` reformats a piece of source for display (``notebook.show_source`` uses it) without changing what
it does: ruff's formatter at the page width, long string literals split into adjacent literals (which Python joins),
long comments and docstring lines wrapped. The result parses to the same syntax tree, docstrings' whitespace aside.
Without ruff (a bare Colab), the source comes back unchanged.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import textwrap
import tokenize

PAGE_WIDTH = 88


def _ruff() -> str | None:
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        return None
    try:
        return str(find_ruff_bin())
    except FileNotFoundError:
        return None


def _format(source: str, width: int, ruff: str) -> str:
    run = subprocess.run([ruff, "format", "--isolated", "--line-length", str(width), "-"], input=source, capture_output=True, text=True)
    return run.stdout.rstrip("\n") if run.returncode == 0 else source


def _tokens(source: str) -> list[tokenize.TokenInfo] | None:
    try:
        return list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return None


def _split_point(body: str, room: int, is_f: bool) -> int | None:
    """Where to cut a string literal's body (after a space, outside any f-string field), at most ``room`` in."""
    depth, best, i = 0, None, 0
    while i < min(len(body), room):
        pair = body[i : i + 2]
        if pair[:1] == "\\" or (is_f and pair in ("{{", "}}")):
            i += 2
            continue
        if is_f and body[i] in "{}":
            depth += 1 if body[i] == "{" else -1
        elif body[i] == " " and depth == 0 and i > 10:
            best = i + 1
        i += 1
    return best if best is not None and best < len(body) else None


def _literal(prefix: str, quote: str, part: str) -> str:
    """A string literal holding ``part``; an f-string part without fields drops the f (ruff's F541)."""
    p = prefix if "{" in part or "}" in part else prefix.replace("f", "").replace("F", "")
    return f"{p}{quote}{part}{quote}"


def _split_strings(source: str, width: int) -> str:
    lines, toks = source.split("\n"), _tokens(source)
    if toks is None:
        return source
    edits = []
    for t in toks:
        (row, c0), (row_end, c1) = t.start, t.end
        if t.type != tokenize.STRING or row != row_end or c1 <= width or len(lines[row - 1]) <= width:
            continue
        m = re.fullmatch(r"([A-Za-z]*)(['\"])(.*)\2", t.string, re.S)
        if not m or "b" in m.group(1).lower() or t.string[len(m.group(1)) :].startswith(("'''", '"""')):
            continue
        prefix, quote, body = m.groups()
        room = width - 2 - (c0 + len(prefix) + 1)
        cut = _split_point(body, room if room >= 20 else width - 10 - len(prefix), "f" in prefix.lower())
        if cut is None:
            continue
        edits.append((row, c0, c1, f"{_literal(prefix, quote, body[:cut])} {_literal(prefix, quote, body[cut:])}"))
    for row, c0, c1, new in sorted(edits, reverse=True):
        lines[row - 1] = lines[row - 1][:c0] + new + lines[row - 1][c1:]
    return "\n".join(lines)


def _wrap_comments(source: str, width: int) -> str:
    toks = _tokens(source)
    if toks is None:
        return source
    comments = {t.start[0]: t for t in toks if t.type == tokenize.COMMENT}
    out = []
    for n, line in enumerate(source.split("\n"), 1):
        t = comments.get(n)
        if len(line) <= width or t is None or "noqa" in t.string:
            out.append(line)
            continue
        indent = re.match(r"\s*", line).group(0)
        wrapped = textwrap.wrap(t.string.lstrip("#").strip(), width - len(indent) - 2, break_long_words=False, break_on_hyphens=False)
        out += [f"{indent}# {w}" for w in wrapped]  # a trailing comment moves above its line
        if line[: t.start[1]].strip():
            out.append(line[: t.start[1]].rstrip())
    return "\n".join(out)


def _wrap_docstrings(source: str, width: int) -> str:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines, spans = source.split("\n"), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                spans.append((doc.lineno, doc.end_lineno, doc.col_offset))
    for first, last, col in sorted(spans, reverse=True):
        new = []
        for k, line in enumerate(lines[first - 1 : last]):
            if len(line) <= width:
                new.append(line)
                continue
            indent = re.match(r"\s*", line).group(0)
            head = re.match(r'[rRuU]?("""|\'\'\')', line[len(indent) :]).group(0) if k == 0 else ""
            parts = textwrap.wrap(
                line[len(indent) + len(head) :], width - len(indent) - len(head), break_long_words=False, break_on_hyphens=False
            )
            new += [indent + head + parts[0], *(" " * col + p for p in parts[1:])]
        lines[first - 1 : last] = new
    return "\n".join(lines)


def fit_to_page(source: str, width: int = PAGE_WIDTH) -> str:
    """``source`` reformatted to ``width`` columns where it can be, doing the same thing (see the module's text)."""
    ruff = _ruff()
    if ruff is None:
        return source
    text = textwrap.dedent(source).rstrip("\n")
    out = _format(text, width, ruff)
    for _ in range(4):
        again = _format(_wrap_comments(_wrap_docstrings(_split_strings(out, width), width), width), width, ruff)
        if again == out:
            break
        out = again
    return out + "\n"
