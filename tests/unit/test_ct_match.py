"""ctwatch.match: pattern kinds, normalisation, wildcard SANs, errors, both build paths."""

from __future__ import annotations

import random

import pytest

from ctwatch.match import Watchlist, WatchlistError

WATCHLIST = """\
# production domains
example.com
.example.org          # the whole tree
*.example.net
Bücher.example
.XN--CAF-DMA.test.
"""


@pytest.fixture
def wl() -> Watchlist:
    return Watchlist.from_lines(WATCHLIST.splitlines())


def test_patterns_are_normalised(wl: Watchlist) -> None:
    assert sorted(wl.patterns()) == [
        "*.example.net",
        ".example.org",
        ".xn--caf-dma.test",
        "example.com",
        "xn--bcher-kva.example",
    ]
    assert len(wl) == 5


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.Com.", "example.com"),
        ("www.example.com", None),  # exact means exact
        ("example.org", ".example.org"),  # the domain itself is in its tree
        ("a.example.org", ".example.org"),
        ("a.b.c.example.org", ".example.org"),
        ("www.example.net", "*.example.net"),
        ("WWW.Example.NET.", "*.example.net"),
        ("example.net", None),  # a wildcard does not cover the apex
        ("a.www.example.net", None),  # nor two labels down
    ],
)
def test_pattern_kinds(wl: Watchlist, name: str, pattern: str | None) -> None:
    assert wl.match(name) == pattern


@pytest.mark.parametrize(
    "name",
    [
        "notexample.com",
        "example.com.evil",
        "example.comx",
        "xexample.org",
        "example.org.evil.com",
        "notexample.org",
        "example.org-evil.com",
        "example.net.attacker.io",
        "com",
        "org",
        "",
        ".",
    ],
)
def test_no_false_positives(wl: Watchlist, name: str) -> None:
    assert wl.match(name) is None


def test_idna_unicode_pattern_matches_punycode_name_and_back(wl: Watchlist) -> None:
    assert wl.match("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert wl.match("XN--BCHER-KVA.EXAMPLE.") == "xn--bcher-kva.example"
    assert wl.match("bücher.example") == "xn--bcher-kva.example"
    assert wl.match("BÜCHER.example.") == "xn--bcher-kva.example"
    # punycode pattern (".XN--CAF-DMA.test."), Unicode name
    assert wl.match("café.test") == ".xn--caf-dma.test"
    assert wl.match("menu.café.TEST") == ".xn--caf-dma.test"
    assert wl.match("cafe.test") is None


def test_unicode_wildcard_and_tree_patterns() -> None:
    wl = Watchlist.from_lines(["*.bücher.example", ".münchen.test"])
    assert sorted(wl.patterns()) == ["*.xn--bcher-kva.example", ".xn--mnchen-3ya.test"]
    assert wl.match("shop.xn--bcher-kva.example") == "*.xn--bcher-kva.example"
    assert wl.match("a.b.münchen.test") == ".xn--mnchen-3ya.test"


def test_stdlib_idna_is_idna_2003() -> None:
    # Documented choice: the stdlib codec maps ß to ss (IDNA 2003, nameprep).
    wl = Watchlist.from_lines(["straße.example"])
    assert list(wl.patterns()) == ["strasse.example"]
    # A name that is not valid IDNA cannot match anything (and does not raise).
    assert wl.match("a\u0000b.example") is None


def test_most_specific_pattern_wins() -> None:
    wl = Watchlist.from_lines(
        [".example.com", ".shop.example.com", "*.shop.example.com", "www.shop.example.com"]
    )
    assert wl.match("www.shop.example.com") == "www.shop.example.com"  # exact
    assert wl.match("cart.shop.example.com") == "*.shop.example.com"  # then wildcard
    assert wl.match("a.cart.shop.example.com") == ".shop.example.com"  # then longest tree
    assert wl.match("shop.example.com") == ".shop.example.com"
    assert wl.match("mail.example.com") == ".example.com"


def test_root_watch_matches_everything() -> None:
    wl = Watchlist.from_lines([".", "example.com"])
    assert wl.match("example.com") == "example.com"
    assert wl.match("anything.at.all") == "."
    assert wl.match("*.anything") == "."


# -- wildcard SANs (certspotter semantics: the certificate could be valid for a watched name) --


@pytest.mark.parametrize(
    ("watch", "san", "expected"),
    [
        ("*.example.com", "*.example.com", "*.example.com"),
        (".example.com", "*.example.com", ".example.com"),
        (".com", "*.example.com", ".com"),
        ("www.example.com", "*.example.com", "www.example.com"),
        (".www.example.com", "*.example.com", ".www.example.com"),
        ("example.com", "*.example.com", None),  # the apex is not covered
        ("*.www.example.com", "*.example.com", None),  # nor anything two labels down
        ("a.www.example.com", "*.example.com", None),
        ("www.example.com", "*.www.example.com", None),
        ("www.example.com", "*.EXAMPLE.com.", "www.example.com"),
        ("www.example.com", "?.example.com", "www.example.com"),  # redacted label
        ("www.example.com", "w*.example.com", "www.example.com"),  # partial wildcard
        ("www.example.com", "x*.example.com", None),
        (".mail.example.com", "m*.example.com", ".mail.example.com"),
        (".mail.example.com", "w*.example.com", None),
        ("localhost", "*", "localhost"),
        ("www.bücher.example", "*.xn--bcher-kva.example", "www.xn--bcher-kva.example"),
    ],
)
def test_wildcard_sans(watch: str, san: str, expected: str | None) -> None:
    wl = Watchlist.from_lines([watch])
    assert wl.match(san) == expected


def test_wildcard_san_prefers_wildcard_watch_then_exact_then_tree() -> None:
    wl = Watchlist.from_lines([".example.com", "www.example.com", "*.example.com"])
    assert wl.match("*.example.com") == "*.example.com"
    wl = Watchlist.from_lines([".example.com", "www.example.com"])
    assert wl.match("*.example.com") == "www.example.com"
    wl = Watchlist.from_lines([".example.com", ".www.example.com"])
    assert wl.match("*.example.com") == ".www.example.com"
    wl = Watchlist.from_lines(["www.example.com", "mail.example.com"])
    assert wl.match("*.example.com") in {"www.example.com", "mail.example.com"}


def test_wildcard_not_leftmost_only_matches_trees_above_it() -> None:
    wl = Watchlist.from_lines([".example.com", "www.a.example.com"])
    assert wl.match("www.*.example.com") == ".example.com"
    assert Watchlist.from_lines(["www.a.example.com"]).match("www.*.example.com") is None


def test_match_any_reports_each_matching_name_once() -> None:
    wl = Watchlist.from_lines([".example.com", "*.example.net"])
    names = ["example.com", "www.example.com", "example.com", "other.org", "a.example.net"]
    assert wl.match_any(names) == [
        ("example.com", ".example.com"),
        ("www.example.com", ".example.com"),
        ("a.example.net", "*.example.net"),
    ]
    assert wl.match_any([]) == []
    assert wl.match_any(["nope.org"]) == []


# -- parsing ---------------------------------------------------------------------------------


def test_comments_blank_lines_whitespace_and_certspotter_fields() -> None:
    lines = [
        "# a comment",
        "",
        "   ",
        "  example.com  ",
        "\t.example.org\t# trailing comment",
        "example.net valid_at:2023-01-01",
        "#.not-watched.com",
        "example.io.\r",
    ]
    wl = Watchlist.from_lines(lines)
    assert sorted(wl.patterns()) == [".example.org", "example.com", "example.io", "example.net"]
    assert wl.match("x.not-watched.com") is None


def test_duplicates_after_normalisation_count_once() -> None:
    wl = Watchlist.from_lines(["Example.com", "example.com.", "EXAMPLE.COM"])
    assert list(wl.patterns()) == ["example.com"]
    assert len(wl) == 1


def test_empty_watchlist() -> None:
    wl = Watchlist.from_lines([])
    assert len(wl) == 0
    assert wl.match("example.com") is None
    assert wl.match("*.example.com") is None
    assert Watchlist.from_lines(["# only comments", ""]).match("example.com") is None


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("exa mple.com", "unknown field"),
        ("example..com", "empty label"),
        ("..", "empty name"),
        ("..example.com", "empty label"),
        ("*.", "'*'"),
        ("*", "'*'"),
        ("*example.com", "'*'"),
        ("www.*.example.com", "'*'"),
        ("*.*.example.com", "'*'"),
        ("w*.example.com", "'*'"),
        ("-example.com", "'-'"),
        ("example-.com", "'-'"),
        (".-example.com", "'-'"),
        ("exam!ple.com", "characters"),
        ("exam/ple.com", "characters"),
        ("a" * 64 + ".com", "label longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("xn--ab\u00e7d.com", "IDNA"),
    ],
)
def test_invalid_patterns_name_line_and_pattern(pattern: str, reason: str) -> None:
    lines = ["# header", "ok.example.com", "", pattern, "also-ok.example.com"]
    with pytest.raises(WatchlistError) as exc:
        Watchlist.from_lines(lines)
    assert exc.value.lineno == 4
    assert exc.value.pattern == pattern.strip()
    assert reason in exc.value.reason
    assert isinstance(exc.value, ValueError)
    assert "line 4" in str(exc.value)
    assert repr(pattern.strip()) in str(exc.value)


def test_from_patterns_positions_and_no_comment_syntax() -> None:
    wl = Watchlist.from_patterns(["example.com", "*.example.net", ".example.org"])
    assert wl.match("a.example.org") == ".example.org"
    with pytest.raises(WatchlistError) as exc:
        Watchlist.from_patterns(["example.com", "bad..com"])
    assert exc.value.lineno == 2
    with pytest.raises(WatchlistError):
        Watchlist.from_patterns(["example.com # comment"])
    with pytest.raises(WatchlistError) as exc:
        Watchlist.from_patterns(["example.com", ""])
    assert exc.value.lineno == 2
    assert exc.value.reason == "empty name"


def test_bulk_and_per_line_paths_agree() -> None:
    # The bulk path takes plain ASCII input; one certspotter field forces the per-line path.
    lines = [
        "a.example.com",
        ".b.example.com",
        "*.c.example.com",
        "D.Example.com.",
        "_acme-challenge.example.com",
        "x" * 63 + ".example.com",
        "# c",
        "  e.example.com  # c",
    ]
    bulk = Watchlist.from_lines(lines)
    per_line = Watchlist.from_lines([*lines, "a.example.com valid_at:2020-01-01"])
    assert sorted(bulk.patterns()) == sorted(per_line.patterns())
    assert "d.example.com" in set(bulk.patterns())


def test_bulk_path_never_accepts_what_the_per_line_path_rejects() -> None:
    # Random short patterns over the characters that matter; the bulk result (or its error)
    # must equal the per-line one for each.
    rnd = random.Random(1234)
    alphabet = "ab.-*_# \t"
    for _ in range(3000):
        line = "".join(rnd.choices(alphabet, k=rnd.randint(0, 8)))
        outcomes = []
        for lines in ([line, "ok.com"], [line, "ok.com", "ok.com valid_at:x"]):
            try:
                outcomes.append(sorted(Watchlist.from_lines(lines).patterns()))
            except WatchlistError as e:
                outcomes.append([f"error {e.lineno}"])
        assert outcomes[0] == outcomes[1], line


def test_lines_with_newlines_from_a_file() -> None:
    # Iterating a file yields lines that keep their "\n": accepted as such.
    wl = Watchlist.from_lines(["example.com\n", ".example.org\n", "# c\n", "\n"])
    assert sorted(wl.patterns()) == [".example.org", "example.com"]
    wl = Watchlist.from_lines(["example.com\r\n", ".example.org"])
    assert sorted(wl.patterns()) == [".example.org", "example.com"]
    # A newline inside a "line" is not a line end: each line is validated on its own.
    with pytest.raises(WatchlistError) as exc:
        Watchlist.from_lines(["a.com\nx.com", ".b.com"])
    assert exc.value.lineno == 1
    # Mixed line ends (per-line path): each line is stripped.
    wl = Watchlist.from_lines(["a.com", ".b.com\n", "c.com\n"])
    assert sorted(wl.patterns()) == [".b.com", "a.com", "c.com"]


def test_repr() -> None:
    assert repr(Watchlist.from_lines(["example.com"])) == "<Watchlist 1 patterns>"
