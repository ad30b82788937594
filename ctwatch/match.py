"""Watched-domain matching for the CT monitor (issue 7, item 4).

A :class:`Watchlist` answers "is this certificate name one we watch, and by which pattern?" in
O(labels) dict lookups, however many patterns it holds. Pattern syntax (one per line, the
certspotter watchlist syntax plus TLS wildcards):

``example.com``
    exactly that name.
``.example.com``
    the domain and all its subdomains (certspotter's "domain tree" syntax). ``.`` alone watches
    every name (certspotter's root-zone item).
``*.example.com``
    names exactly one label below ``example.com`` (TLS wildcard semantics, RFC 6125 section
    6.4.3): ``www.example.com`` but neither ``example.com`` nor ``a.www.example.com``.

``#`` starts a comment (whole line or after the pattern); blank lines are ignored. For
compatibility with certspotter watchlists, ``valid_at:...`` fields after the pattern are accepted
and ignored; any other field is an error.

Normalisation (patterns and names alike): lower case, trailing dots removed, Unicode labels
converted to punycode, so ``Bücher.example.``, ``bücher.example`` and ``xn--bcher-kva.example``
are the same. IDNA is the standard library's ``idna`` codec, which implements IDNA 2003
(RFC 3490, nameprep). The ``idna`` package (IDNA 2008) happens to be installed as a transitive
dependency but is not one of ours, and the two differ only for a handful of characters (IDNA 2003
maps ``ß`` to ``ss`` and final sigma to sigma, IDNA 2008 keeps them distinct and encodes them), so
a watch for ``straße.example`` written in Unicode matches ``strasse.example``; write the punycode
form (``xn--strae-oqa.example``) to watch the IDNA 2008 name. ASCII input never goes through the
codec (the fast path on both reload and lookup), so punycode labels are taken as written.

Names that are themselves wildcards (a SAN ``*.example.com``) follow certspotter
(``monitor/watchlist.go``, ``dnsLabelMatches``): a wildcard label in a certificate could stand
for any label, so the certificate is reported if it *could be valid for* a watched name. A SAN
``*.example.com`` therefore matches the watches ``*.example.com``, ``.example.com`` (and any
ancestor tree), ``www.example.com`` (the certificate is valid for it) and ``.www.example.com``
(it is valid for ``www.example.com``, which is in that tree); it does not match ``example.com``
or ``*.www.example.com`` (it is valid for no name in either). The same holds for a partial
wildcard label (``w*.example.com`` matches ``www.example.com`` but not ``mail.example.com``) and
for a redacted leftmost label ``?`` (RFC 9162's predecessor drafts' name redaction, which
certspotter also treats as "any label"). Only the leftmost label is treated as a wildcard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat

__all__ = ["Watchlist", "WatchlistError"]

# Characters a normalised (ASCII, lower-case) pattern may hold. Underscore is allowed because it
# appears in real certificate names (``_acme-challenge``, SRV-style names) even though it is not
# a hostname character.
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_."
_MAX_NAME = 253  # RFC 1035 section 2.3.4 (255 octets on the wire, 253 as text)
_MAX_LABEL = 63


class WatchlistError(ValueError):
    """An invalid watchlist pattern. The caller turns it into a ``ConfigError``."""

    def __init__(self, lineno: int, pattern: str, reason: str) -> None:
        self.lineno = lineno
        self.pattern = pattern
        self.reason = reason
        shown = pattern if len(pattern) <= 512 else pattern[:509] + "..."  # a line may be huge
        super().__init__(f"watchlist line {lineno}: invalid pattern {shown!r}: {reason}")


def _name_problem(name: str) -> str | None:
    """Why the normalised ASCII ``name`` is not a valid DNS name, or None when it is."""
    if not name:
        return "empty name"
    if "*" in name:
        return "'*' is allowed only as the whole leftmost label ('*.example.com')"
    if name.strip(_NAME_CHARS):
        return "characters other than letters, digits, '-', '_' and '.'"
    if len(name) > _MAX_NAME:
        return f"longer than {_MAX_NAME} characters"
    if name[0] == "." or ".." in name:
        return "empty label"
    if name[0] == "-" or name[-1] == "-" or "-." in name or ".-" in name:
        return "label starts or ends with '-'"
    if len(name) > _MAX_LABEL and any(len(label) > _MAX_LABEL for label in name.split(".")):
        return f"label longer than {_MAX_LABEL} characters"
    return None


def _idna_encode(name: str) -> str:
    """Punycode form of a lower-cased Unicode ``name``; ``UnicodeError`` when invalid."""
    return name.encode("idna").decode("ascii")


def _normalise_name(name: str) -> str | None:
    """A certificate name as looked up: lower case, no trailing dot, punycode. None if invalid.

    The hot path: ASCII names (nearly all of them; dNSName SANs are IA5String) are only
    lower-cased; the IDNA codec runs for the rare non-ASCII one.
    """
    if name.isascii():
        n = name.lower()
    else:
        try:
            n = _idna_encode(name.lower().rstrip("."))
        except UnicodeError:
            return None
    if n[-1:] == ".":
        n = n.rstrip(".")
    return n


@dataclass(frozen=True, slots=True)
class _Tables:
    """The watched names by kind. Sets, not dicts: the matched pattern is rebuilt from the
    kind and the name on a hit, which keeps a reload to a few C-level passes."""

    exact: set[str]  # "example.com"
    wildcard: set[str]  # "example.com" for "*.example.com"
    suffix: set[str]  # "example.com" for ".example.com"
    root: bool  # "." (everything) is watched


class Watchlist:
    """An immutable set of watched-domain patterns; see the module docstring for the syntax.

    Build it with :meth:`from_lines` (a watchlist file) or :meth:`from_patterns`; reloading is
    building a new one and swapping the reference, which is atomic for readers.
    """

    __slots__ = ("_any_child", "_children", "_exact", "_root", "_suffix", "_wildcard")

    def __init__(self, tables: _Tables) -> None:
        self._exact = tables.exact
        self._wildcard = tables.wildcard
        self._suffix = tables.suffix
        self._root = "." if tables.root else None
        # Exact and tree watches indexed by their parent domain, for wildcard SANs. Built on
        # the first wildcard SAN, so that a reload pays only for the three sets above; the
        # build is idempotent, so a race between two threads only does it twice.
        self._any_child: tuple[dict[str, str], dict[str, str]] | None = None
        self._children: tuple[dict[str, list[str]], dict[str, list[str]]] | None = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Watchlist:
        """Parse watchlist-file lines. ``WatchlistError`` (a ``ValueError``) names the 1-based
        line number and the pattern of the first invalid line."""
        lines = list(lines)
        tables = _build_bulk(lines, comments=True)
        return cls(tables or _build(_lines_to_patterns(lines)))

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> Watchlist:
        """Build from bare patterns (no comments or fields); errors give the 1-based position
        as the line number."""
        patterns = list(patterns)
        tables = _build_bulk(patterns, comments=False)
        return cls(tables or _build(enumerate(patterns, 1)))

    # -- lookups --------------------------------------------------------------------------

    def match(self, name: str) -> str | None:
        """The normalised pattern that ``name`` matches, or None.

        Most specific first: an exact watch, then a ``*.`` wildcard watch, then the longest
        ``.domain`` tree watch (then ``.``). Wildcard and redacted names: see the module
        docstring.
        """
        n = _normalise_name(name)
        if not n:
            return None
        if "*" in n or n[:2] == "?.":
            return self._match_wildcard_name(n)
        if n in self._exact:
            return n
        i = n.find(".")
        if i >= 0 and self._wildcard:
            parent = n[i + 1 :]
            if parent in self._wildcard:
                return "*." + parent
        suffix = self._suffix
        if suffix:
            s = n
            while True:
                if s in suffix:
                    return "." + s
                i = s.find(".")
                if i < 0:
                    break
                s = s[i + 1 :]
        return self._root

    def match_any(self, names: Iterable[str]) -> list[tuple[str, str]]:
        """``(name, pattern)`` for each of a certificate's names that matches, in input order;
        a name repeated (the subject CN is usually also a SAN) is reported once."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        match = self.match
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            p = match(name)
            if p is not None:
                out.append((name, p))
        return out

    def _match_wildcard_name(self, n: str) -> str | None:
        i = n.find(".")
        if i < 0:
            # A bare "*" (or "?") could be any single-label name.
            return self._match_children("", n) or self._root
        first, parent = n[:i], n[i + 1 :]
        if "*" in parent:
            # Not a valid TLS wildcard (RFC 6125 section 6.4.3: leftmost label only); only the
            # tree watches above the last wildcard label can be said to cover it.
            return self._match_suffix(parent[parent.rfind("*") :].partition(".")[2])
        if parent in self._wildcard:
            return "*." + parent
        p = self._match_children(parent, first)
        if p is not None:
            return p
        return self._match_suffix(parent)

    def _match_children(self, parent: str, first: str) -> str | None:
        """An exact or tree watch one label below ``parent`` that the wildcard label ``first``
        covers. Among several, which one is reported is unspecified (set order)."""
        if first in ("*", "?"):
            if self._any_child is None:
                self._any_child = (_child_by_parent(self._exact), _child_by_parent(self._suffix))
            exact_kid = self._any_child[0].get(parent)
            if exact_kid is not None:
                return exact_kid
            suffix_kid = self._any_child[1].get(parent)
            return None if suffix_kid is None else "." + suffix_kid
        # A partial wildcard label ("w*", RFC 6125 section 6.4.3): rare (and deprecated by the
        # CA/Browser Forum), so its full per-parent index is built only when one shows up.
        if self._children is None:
            self._children = _index_children(self._exact, self._suffix)
        matcher = re.compile(re.escape(first).replace(r"\*", "[^.]*"))
        for index, prefix in ((self._children[0], ""), (self._children[1], ".")):
            for label in index.get(parent, ()):
                if matcher.fullmatch(label):
                    return f"{prefix}{label}.{parent}" if parent else prefix + label
        return None

    def _match_suffix(self, s: str) -> str | None:
        suffix = self._suffix
        while s:
            if s in suffix:
                return "." + s
            s = s.partition(".")[2]
        return self._root

    # -- introspection --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcard) + len(self._suffix) + (self._root is not None)

    def patterns(self) -> Iterator[str]:
        """The normalised patterns (duplicates after normalisation appear once)."""
        yield from self._exact
        yield from ("*." + name for name in self._wildcard)
        yield from ("." + name for name in self._suffix)
        if self._root is not None:
            yield self._root

    def __repr__(self) -> str:
        return f"<Watchlist {len(self)} patterns>"


def _lines_to_patterns(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for lineno, line in enumerate(lines, 1):
        if "#" in line:
            line = line.partition("#")[0]
        text = line.strip()
        if not text:
            continue
        if " " in text or "\t" in text:
            text, *fields = text.split()
            for field in fields:
                if not field.startswith("valid_at:"):
                    raise WatchlistError(lineno, line.strip(), f"unknown field {field[:40]!r}")
        yield lineno, text


_COMMENT_RE = re.compile(r"[ \t]*#[^\n]*")
_TRAILING_SPACE_RE = re.compile(r"[ \t\r]+\n")
_LEADING_SPACE_RE = re.compile(r"\n[ \t\r]+")
_EXACT_PARENT_RE = re.compile(r"\n[^.\n]*\.?([^\n]*)")
_EXACT_RE = re.compile(r"\n([^.*\n][^\n]*)")
_WILDCARD_RE = re.compile(r"\n\*\.([^\n]*)")
_SUFFIX_RE = re.compile(r"\n\.([^\n]*)")
_PATTERN_BYTES = _NAME_CHARS.encode("ascii") + b"*\n"


def _build_bulk(lines: list[str], *, comments: bool) -> _Tables | None:
    """Build the tables with whole-text string operations instead of a Python loop per line.

    A reload of 100k patterns must take under 100 ms, i.e. under 1 us a pattern, which a
    per-line loop with validation does not reach. Each step here is one C-level pass over the
    joined text (``str`` methods and regular expressions that start with a literal newline, so
    the regex engine skips ahead with a fast search). Anything unusual (non-ASCII, certspotter
    fields, the root watch, runs of trailing dots, any invalid pattern) returns None and the
    caller falls back to the per-line path, which also produces the error with its line number.
    """
    if not lines:
        return _Tables(set(), set(), set(), root=False)
    text = "\n" + "\n".join(lines)  # every pattern, the first included, follows a newline
    if text.count("\n") != len(lines):
        # Lines read from a file keep their "\n" (the last one may lack it). Any other newline
        # (inside a pattern) goes to the per-line path, which reports it.
        ends = sum(map(str.endswith, lines, repeat("\n")))
        joined = "".join(lines)
        last_bare = not lines[-1].endswith("\n")
        if joined.count("\n") != ends or ends != len(lines) - last_bare:
            return None
        text = "\n" + (joined if last_bare else joined[:-1])
    if not text.isascii():
        return None  # IDNA, per pattern
    text = text.lower()
    if comments and "#" in text:
        text = _COMMENT_RE.sub("", text)  # with the blanks before it
    if " " in text or "\t" in text or "\r" in text:
        text = _TRAILING_SPACE_RE.sub("\n", text + "\n")[:-1]
        text = _LEADING_SPACE_RE.sub("\n", text)
        if " " in text or "\t" in text or "\r" in text:
            return None  # certspotter fields after the pattern
    text += "\n"
    if ".." in text or "\n.\n" in text:
        return None  # the root watch ".", or an empty label somewhere
    if ".\n" in text:
        text = text.replace(".\n", "\n")  # one trailing dot: "example.com."
    # Validation without splitting: a pattern is "*." or "." or nothing, then LDH labels
    # (plus "_") separated by single dots, no label starting or ending with "-".
    if (
        text.encode("ascii").translate(None, _PATTERN_BYTES)
        or text.count("*") != text.count("\n*.")  # "*" only as a whole leftmost label
        or "\n*.\n" in text
        or "\n.\n" in text
        or "\n-" in text
        or "-\n" in text
        or ".-" in text
        or "-." in text
        or (not comments and "\n\n" in text)  # an empty pattern
    ):
        return None
    found = (_EXACT_RE.findall(text), _WILDCARD_RE.findall(text), _SUFFIX_RE.findall(text))
    for names in found:
        # Only names longer than a label can break a length limit: rare, checked one by one.
        # (On the lists: iterating a list is much faster than iterating a set.)
        if (
            names
            and max(map(len, names)) > _MAX_LABEL
            and any(_name_problem(name) for name in names if len(name) > _MAX_LABEL)
        ):
            return None
    exact, wildcard, suffix = map(set, found)
    return _Tables(exact, wildcard, suffix, root=False)


def _build(items: Iterable[tuple[int, str]]) -> _Tables:
    exact: set[str] = set()
    wildcard: set[str] = set()
    suffix: set[str] = set()
    root = False
    for lineno, raw in items:
        pattern = raw.strip()
        # ASCII fast path: lower-casing is the whole normalisation (no IDNA codec call).
        p = pattern.lower() if pattern.isascii() else _unicode_pattern(lineno, pattern)
        if p[-1:] == ".":
            if p == ".":
                root = True
                continue
            p = p.rstrip(".")
        if p[:1] == ".":
            name, table = p[1:], suffix
        elif p[:2] == "*.":
            name, table = p[2:], wildcard
        else:
            name, table = p, exact
        problem = _name_problem(name)
        if problem is not None:
            raise WatchlistError(lineno, pattern, problem)
        table.add(name)
    return _Tables(exact, wildcard, suffix, root)


def _unicode_pattern(lineno: int, pattern: str) -> str:
    p = pattern.lower().rstrip(".")
    prefix = "." if p[:1] == "." else "*." if p[:2] == "*." else ""
    try:
        return prefix + _idna_encode(p[len(prefix) :])
    except UnicodeError as e:
        raise WatchlistError(lineno, pattern, f"not a valid IDNA name ({e})") from e


def _child_by_parent(names: set[str]) -> dict[str, str]:
    """One name of ``names`` per parent domain ("" for single-label names), in C-level passes:
    ``_EXACT_PARENT_RE`` yields each line's parent, aligned with the lines."""
    if not names:
        return {}
    text = "\n".join(names)
    return dict(zip(_EXACT_PARENT_RE.findall("\n" + text), text.split("\n"), strict=True))


def _index_children(
    exact: set[str], suffix: set[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Map each parent domain to the first labels of the exact and tree watches just below it."""
    out: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
    for table, index in zip((exact, suffix), out, strict=True):
        for name in table:
            label, _, parent = name.partition(".")
            kids = index.get(parent)
            if kids is None:
                index[parent] = [label]
            else:
                kids.append(label)
    return out
