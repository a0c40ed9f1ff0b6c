#!/usr/bin/env bash
# Checks every relative link and image in the Markdown files a reader
# follows: README.md, ARCHITECTURE.md, LOC_BUDGET.md and docs/*.md. A link
# to a missing file, or to a missing #anchor of a Markdown file (GitHub's
# anchors: the heading in lower case, spaces to '-', punctuation other than
# '-' and '_' dropped, '-1', '-2' … for repeats), is named with its file and
# line, and the script exits 1. http(s) and mailto links are not followed;
# code blocks and code spans are not links.
#   scripts/links.sh             the files above
#   scripts/links.sh FILE.md …   only these
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  set -- README.md ARCHITECTURE.md LOC_BUDGET.md docs/*.md
fi
exec python3 - "$@" <<'EOF'
import os
import re
import sys
from urllib.parse import unquote

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# [text](  or  ![alt](  — the text may hold one level of brackets and
# span lines; the destination is parsed by hand (parentheses may nest).
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)", re.M)
HTML = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]*)\"", re.I)
HTML_ID = re.compile(r"<[a-z][^>]*?\b(?:id|name)=\"([^\"]*)\"", re.I)
SKIPPED = re.compile(r"^(?:https?:|mailto:)", re.I)


def without_fences(text):
    """The text with fenced code blocks blanked out, their lines kept so
    that line numbers stay right."""
    lines = text.split("\n")
    fence = None
    for number, line in enumerate(lines):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            lines[number] = ""
        elif fence is not None:
            closed = FENCE.match(line)
            if closed and closed.group(1)[0] == fence[0] and len(closed.group(1)) >= len(fence) \
                    and line.strip() == closed.group(1):
                fence = None
            lines[number] = ""
    return "\n".join(lines)


def without_code(text):
    """The text without fenced blocks and code spans (blanked out)."""
    text = without_fences(text)
    # A code span may wrap, but not across a blank line.
    span = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
    return span.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "")
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


anchors_cache = {}


def anchors(path):
    """Every anchor a Markdown file has: its headings' and its HTML ids."""
    if path in anchors_cache:
        return anchors_cache[path]
    with open(path, encoding="utf-8") as file:
        text = file.read()
    plain = without_fences(text).split("\n")
    found, seen = set(), {}
    previous = ""
    for line in plain:
        heading = None
        match = ATX.match(line)
        if match:
            heading = match.group(2) or ""
        elif SETEXT.match(line) and previous.strip() and not ATX.match(previous):
            # A '---' under a paragraph line makes it a heading.
            heading = previous
        if heading is not None:
            base = slug(heading)
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
        found.update(HTML_ID.findall(line))
        previous = line
    anchors_cache[path] = found
    return found


def destination(text, start):
    """The link destination starting at text[start], after '('."""
    rest = text[start:]
    if rest.startswith("<"):
        end = rest.find(">")
        return rest[1:end] if end > 0 else None
    depth, out = 0, []
    for char in rest:
        if char in " \t\n":
            break
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                break
            depth -= 1
        out.append(char)
    return "".join(out)


def links(path):
    """(line, destination) for every link and image of a Markdown file."""
    with open(path, encoding="utf-8") as file:
        text = without_code(file.read())
    line_of = lambda offset: text.count("\n", 0, offset) + 1
    for match in INLINE.finditer(text):
        target = destination(text, match.end())
        if target is not None:
            yield line_of(match.start()), target
    for match in REFERENCE.finditer(text):
        yield line_of(match.start()), match.group(1).strip("<>")
    for match in HTML.finditer(text):
        yield line_of(match.start()), match.group(1)


def problem(source, target):
    """Why a link from `source` to `target` does not resolve, or None."""
    path, _, anchor = target.partition("#")
    path, anchor = unquote(path), unquote(anchor)
    resolved = os.path.normpath(os.path.join(os.path.dirname(source), path)) if path else source
    if not os.path.exists(resolved):
        return f"missing file {resolved}"
    if not anchor:
        return None
    if resolved.endswith(".md"):
        if anchor not in anchors(resolved):
            return f"missing anchor #{anchor} in {resolved}"
        return None
    # A line of a source file, as GitHub shows it: #L12 or #L12-L20.
    lines = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
    if lines and os.path.isfile(resolved):
        with open(resolved, encoding="utf-8", errors="replace") as file:
            count = sum(1 for _ in file)
        if all(int(n) <= count for n in lines.groups() if n):
            return None
    return f"missing anchor #{anchor} in {resolved}"


checked, broken = 0, 0
for source in sys.argv[1:]:
    if not os.path.isfile(source):
        print(f"{source}: no such file", file=sys.stderr)
        broken += 1
        continue
    for line, target in links(source):
        if not target or SKIPPED.match(target):
            continue
        checked += 1
        reason = problem(source, target)
        if reason:
            print(f"{source}:{line}: ({target}) {reason}", file=sys.stderr)
            broken += 1
if broken:
    print(f"links: {broken} of {checked} relative links do not resolve", file=sys.stderr)
    sys.exit(1)
print(f"links: {checked} relative links in {len(sys.argv) - 1} files resolve")
EOF
