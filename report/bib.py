"""A small BibTeX reader for the report: entries, author-year labels and the reference list.

Only what ``report/references.bib`` uses is supported: ``@type{key, field = {value} | "value" | 123, ...}``
with nested braces, ``--`` for an en dash, and authors as ``Last, First and Last, First``.
"""
from __future__ import annotations

import re
from pathlib import Path


class BibError(ValueError):
    """A malformed .bib file or an unknown citation key."""


ENTRY = re.compile(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", re.S)
FIELD = re.compile(r"\s*(\w+)\s*=\s*")


def _value(text: str, i: int, where: str) -> tuple[str, int]:
    """Read one field value starting at ``text[i]``; returns (value, index after it)."""
    if text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i + 1:j], j + 1
            j += 1
        raise BibError(f"{where}: unbalanced braces")
    if text[i] == '"':
        j = text.index('"', i + 1)
        return text[i + 1:j], j + 1
    m = re.match(r"[\w.-]+", text[i:])
    if not m:
        raise BibError(f"{where}: cannot read the value at {text[i:i + 20]!r}")
    return m.group(0), i + m.end()


def parse(text: str, name: str = "bibliography") -> dict[str, dict]:
    """{key: {"type": ..., field: value, ...}} of every entry in BibTeX ``text``."""
    entries = {}
    for m in ENTRY.finditer(text):
        kind, key, i = m.group(1).lower(), m.group(2), m.end()
        fields = {"type": kind}
        while True:
            f = FIELD.match(text, i)
            if not f:
                break
            value, i = _value(text, f.end(), f"{name}, entry {key}, field {f.group(1)}")
            fields[f.group(1).lower()] = " ".join(value.split())
            i = re.compile(r"\s*,?").match(text, i).end()
        if key in entries:
            raise BibError(f"{name}: key {key!r} is defined twice")
        for need in ("author", "title", "year"):
            if need not in fields:
                raise BibError(f"{name}: entry {key!r} has no {need}")
        entries[key] = fields
    return entries


def load(path: Path) -> dict[str, dict]:
    return parse(Path(path).read_text(encoding="utf-8"), Path(path).name)


def _plain(s: str) -> str:
    return s.replace("{", "").replace("}", "").replace("--", "–")


def authors(entry: dict) -> list[tuple[str, str]]:
    """[(last, first), ...]; a braced author ({huybery}) is a single last name."""
    out = []
    for a in re.split(r"\s+and\s+", entry["author"]):
        if "," in a and not a.startswith("{"):
            last, first = a.split(",", 1)
            out.append((_plain(last.strip()), _plain(first.strip())))
        else:
            out.append((_plain(a.strip()), ""))
    return out


def label(entry: dict) -> str:
    """Author-year label: 'Zeiler & Fergus, 2014', 'Springenberg et al., 2015'."""
    last = [a[0] for a in authors(entry)]
    who = last[0] if len(last) == 1 else f"{last[0]} & {last[1]}" if len(last) == 2 else f"{last[0]} et al."
    return f"{who}, {entry['year']}"


def narrative(entry: dict) -> str:
    """Narrative label: 'Zeiler & Fergus (2014)'."""
    who, year = label(entry).rsplit(", ", 1)
    return f"{who} ({year})"


def _initials(first: str) -> str:
    return " ".join(p[0] + "." for p in re.split(r"[\s]+", first) if p and p[0].isalpha())


def reference(entry: dict) -> str:
    """One reference-list item as Markdown (author list, year, title, venue, locators, link)."""
    names = [f"{last}, {_initials(first)}" if first else last for last, first in authors(entry)]
    who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", & " + names[-1]
    parts = [f"{who} ({entry['year']}). {_plain(entry['title'])}."]
    venue = entry.get("booktitle") or entry.get("journal") or entry.get("howpublished")
    if venue:
        extra = [f"vol. {entry['volume']}"] if "volume" in entry else []
        extra += [f"pp. {_plain(entry['pages'])}"] if "pages" in entry else []
        parts.append(f"*{_plain(venue)}*" + (", " + ", ".join(extra) if extra else "") + ".")
    if "publisher" in entry:
        parts.append(_plain(entry["publisher"]) + ".")
    if "doi" in entry:
        parts.append(f"doi:{entry['doi']}.")
    elif entry.get("archiveprefix", "").lower() == "arxiv" and "arXiv" not in (venue or ""):
        parts.append(f"arXiv:{entry['eprint']}.")
    if "url" in entry:
        parts.append(f"<{entry['url']}>")
    return " ".join(parts)


def sort_key(entry: dict):
    return ([(last.lower(), first.lower()) for last, first in authors(entry)], entry["year"])
