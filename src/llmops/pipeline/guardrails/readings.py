"""How the guardrail rules read a text: as a reader (a person, or a model) sees it, not as its code points
are. Injection, PII and blocklist rules search a text's readings (`read`), and report spans of the text
itself:

- one for one (offsets hold, `one_for_one`): compatibility forms (NFKC: fullwidth, mathematical, circled,
  superscript letters and digits), letters with diacritics, the Cyrillic, Greek, Armenian, Cherokee, Lisu,
  small-capital, IPA and stroked look-alikes of Latin letters (`lookalikes()`), as those; every decimal digit
  as an ASCII digit; space separators and blank fillers (no-break, narrow and ideographic spaces, Hangul
  fillers, the Braille blank) as a space, line and paragraph separators as a newline; dashes and the minus
  sign as '-', typographic apostrophes and quotes as ASCII ones, the ideographic full stop as '.'. For
  rules written in ASCII (`latin`), every other character not ASCII reads as a word character ('_') if it
  is a letter or digit of a script written with spaces (so "Fußballs" or a Russian word holds no Latin
  word, and "jürgen.straße@example.de" is one address), and otherwise (symbols, and the scripts
  written without spaces: Chinese, Japanese, Korean, Thai, Lao, Khmer, Myanmar) as a character that is
  neither a word character nor a space ('\0'): a Latin phrase, address or number written against Chinese
  stands apart, and numbers joined by symbols or by Chinese dates ("3840×2160", "2024年11月")
  do not read as separated groups;
- combining marks (diacritics written apart, Zalgo stacks, any other mark) are left out;
- characters that show as nothing (format characters: zero-width spaces and joiners, soft hyphens, bidi
  controls, tags, variation selectors) are left out; where the text holds a zero-width space (or a Mongolian
  vowel separator), it is searched again with those read as spaces and the rest left out ("previous
  \u200binstructions" is two words, "pre\u00advious" one);
- where it holds tag characters, which show as nothing but which a model may read as the ASCII they shadow
  ("ASCII smuggling"), it is searched again with them as that ASCII;
- for the injection and blocklist rules (`markup`), where it holds Markdown emphasis, HTML tags or words
  joined by '-' or '_', it is searched again as rendered (tags and emphasis left out, joins as spaces).

Findings of the readings that overlap are joined into one span. Not read: look-alikes this table does not
hold (Unicode's confusables list has more), letters written as several characters (ligatures such as 'st'
read as one), text reordered for display by bidi overrides, and zero-width spaces used both between words
and inside one in the same text."""
# ruff: noqa: RUF001, RUF002 (the look-alike letters are this module's subject)

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

CHUNK = 16_384  # characters translated in one call at most (a character at a time: the GIL is held)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # injection, email, phone, card, iban, blocklist, regex
    start: int
    end: int


Search = Callable[[str], list[Finding]]

_LATIN_LOOKALIKES = {
    **dict(zip("аеорсхуіјѕԁһкмнтвԛԝүӏАЕОРСХУІЈЅԀҺКМНТВӀ", "aeopcxyijsdhkmhtbqwylaeopcxyijsdhkmhtbl", strict=True)),
    **dict(zip("οαεικνρτυχϲϳΟΑΕΙΚΝΡΤΥΧΒΖΗΜ", "oaeikvptuxcjoaeiknptyxbzhm", strict=True)),
    **dict(zip("օսհոցՕՍ", "ouhngou", strict=True)),  # Armenian
    **dict(zip("ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", "abcdefghijklmnoprstuvwyz", strict=True)),  # small capitals
    **dict(zip("ɡɑɩɛøØłŁđĐħƀɨŧƶȷı", "gaieoollddhbitzji", strict=True)),  # IPA, stroked letters, dotless i
    **dict(zip("ꓮꓐꓚꓓꓰꓝꓖꓧꓲꓙꓗꓡꓟꓠꓳꓑꓣꓢꓔꓴꓦꓪꓫꓬꓜ", "abcdefghijklmnoprstuvwxyz", strict=True)),  # Lisu
    **dict(zip("ᎪᏴᏟᎠᎬᏀᎻᎥᎫᏦᏞᎷᎾᏢᎡᏚᎢᏙᎳᏃ", "abcdeghijklmoprstvwz", strict=True)),  # Cherokee
}
_COMPATIBLE = ((0xA0, 0x3400), (0xA600, 0xAB00), (0xFB00, 0xFFF0), (0x1D400, 0x1D800), (0x1F100, 0x1F200))
_ENCLOSED = (0x1F150, 0x1F170, 0x249C)  # negative circled, negative squared capitals; parenthesized small
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000" \
          "\u115f\u1160\u3164\uffa0\u2800"
_PUNCTUATION = {**dict.fromkeys("\u0085\u2028\u2029", "\n"), **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014"
                "\u2015\u2212\u2e3a\u2e3b\ufe58\ufe63", "-"), **dict.fromkeys("\u2018\u2019\u201b\u02bc\u2032", "'"),
                **dict.fromkeys("\u201c\u201d\u201f\u2033", '"'), "\u3002": "."}


@cache
def lookalikes() -> dict[int, str]:
    """The one-for-one translate table (the module's first step): made on first use, 17,000 Unicode lookups,
    about 6 ms."""
    table: dict[int, str] = {}
    for low, high in _COMPATIBLE:
        for code in range(low, high):
            ch = chr(code)
            form = unicodedata.normalize("NFKC", ch)
            if len(form) == 1 and "!" <= form <= "~":
                table[code] = form
            elif (base := _base_letter(ch)) is not None:
                table[code] = base
            elif (digit := unicodedata.decimal(ch, None)) is not None:
                table[code] = str(digit)
    for first in _ENCLOSED:
        table.update({first + i: chr((ord("a") if first == 0x249C else ord("A")) + i) for i in range(26)})
    table.update(str.maketrans({**_LATIN_LOOKALIKES, **dict.fromkeys(_SPACES, " "), **_PUNCTUATION}))
    return table


def _base_letter(ch: str) -> str | None:
    """The Latin letter (or Latin look-alike's) `ch` is with diacritics, if it is one."""
    parts = unicodedata.normalize("NFKD", ch)
    if len(parts) < 2 or not all(unicodedata.combining(c) for c in parts[1:]):
        return None
    base = parts[0]
    return base if base.isascii() and base.isalpha() else _LATIN_LOOKALIKES.get(base)


# Characters that show as nothing: Unicode's format characters (category Cf; Unicode 14's, as
# observability/redaction.py's), the other default-ignorable code points, the combining grapheme joiner,
# variation selectors, Khmer's inherent vowels. Of them, BREAKS separate words (read both as nothing and as a
# space); the others never do.
IGNORABLE = ("\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u17b4\u17b5"
             "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufe00-\ufe0f\ufeff"
             "\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
             "\U0001d173-\U0001d17a\U000e0000-\U000e0fff")
_IGNORABLE = re.compile(f"[{IGNORABLE}]")
_BREAKS = {0x200B: " ", 0x180E: " "}
_BREAK = re.compile("[\u200b\u180e]")
_TAGS = {code: chr(code - 0xE0000) for code in range(0xE0020, 0xE007F)}  # tags as the ASCII they shadow
_TAG = re.compile("[\U000e0020-\U000e007e]")
_NOT_ASCII = re.compile("[^\x00-\x7f]")
# Markdown emphasis and code marks, HTML tags (left out), words joined by '-' or '_' (the join read as a space)
_MARKUP = re.compile(r"<[A-Za-z/!][^<>\n]{0,64}+>|[*~`]")
_JOINED = re.compile(r"(?<=\w)[-_](?=\w)")
_JOINED_WORDS = re.compile(r"\w[-_]\w")
# ASCII as its shape for finding joined words at memmem speed: word characters w (the underscore _), joins
# as themselves, the rest a space; a join between two word characters is then one of _JOINS
_SHAPES = bytes(0x77 if chr(c).isalnum() else c if chr(c) in "-_" else 0x20 for c in range(128)) + b" " * 128
_JOINS = tuple(a + j + b for a in (b"w", b"_") for j in (b"-", b"_") for b in (b"w", b"_"))
# the scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, the ideographs), and
# Korean, whose particles join the word before them
NO_SPACES = ("\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf"
             "\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uffdc\U00020000-\U0003134f")
NO_SPACE = re.compile(f"[{NO_SPACES}]")
_WORDLIKE = re.compile(f"[^\\W\x00-\x7f{NO_SPACES}]")  # letters and digits of the other scripts, not ASCII
# where the combining marks, blanks and invisible characters are (`_scan`)
_SCANNED = ((0, 0x3400), (0xA600, 0xAB00), (0xFB00, 0x10000), (0x11000, 0x11100), (0x13430, 0x13440),
            (0x1BCA0, 0x1BCB0), (0x1D100, 0x1D250), (0x1E000, 0x1E030), (0xE0000, 0xE1000))


def _latin(text: str) -> str:
    """`text` for rules written in ASCII: its other characters as '_' or '\\0' (the last one-for-one step)."""
    return _NOT_ASCII.sub("\0", _WORDLIKE.sub("_", text))


@cache
def _scan() -> dict[str, re.Pattern[str]]:
    """Classes made from Unicode's tables, as ranges (a class of single characters is tried one by one):
    `marks`, every combining mark (categories Mn and Me: diacritics, Zalgo stacks, Hebrew points, kana voicing
    marks); `unseen`, a run of two or more blank, invisible or mark characters, or one invisible or mark
    (what the stream guard does not count in its held tail)."""
    marks, unseen, spaces = [], [], []
    for low, high in _SCANNED:
        for code in range(low, high):
            ch = chr(code)
            if unicodedata.category(ch) in ("Mn", "Me"):
                marks.append(code)
                unseen.append(code)
            elif _IGNORABLE.match(ch) or (ch in _SPACES and not ch.isspace()):
                unseen.append(code)
            elif ch.isspace():
                spaces.append(code)
    seen_not = _ranges(unseen)
    return {"marks": re.compile(f"[{_ranges(marks)}]"),
            "unseen": re.compile(f"[{seen_not}{_ranges(spaces)}]{{2,}}+|[{seen_not}]++")}


def _ranges(codes: list[int]) -> str:
    spans: list[list[int]] = []
    for code in sorted(codes):
        if spans and code == spans[-1][1] + 1:
            spans[-1][1] = code
        else:
            spans.append([code, code])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)


_ASCII_RUNS = re.compile(r"\s{2,}+", re.ASCII)


def unseen_runs(text: str, start: int = 0) -> list[tuple[int, int]]:
    """The runs in text[start:] that a reader does not see as characters: two or more blank, invisible or
    mark characters together, or one invisible or mark character."""
    runs = _ASCII_RUNS if text.isascii() else _scan()["unseen"]
    return [m.span() for m in runs.finditer(text, start)]


def prepare() -> None:
    """Make the tables now (at start-up) rather than on the first request that needs them (some 20 ms)."""
    lookalikes()
    _scan()


def one_for_one(text: str, latin: bool = True) -> str:
    """The text with look-alikes, digits, spaces and punctuation read (`lookalikes()`) and, for `latin`, every
    other character not ASCII as '_' or '\\0' (`_latin`); offsets hold."""
    read = translate(text, lookalikes())
    return _latin(read) if latin else read


def read(text: str, search: Search, latin: bool = True, markup: bool = False) -> list[Finding]:
    """`search`'s findings in `text` as the rules read it (the module's readings), spans the text's own;
    ASCII text is searched as it is. `latin`: the rules are written in ASCII (`one_for_one`); otherwise the
    text keeps its letters and marks as they are, invisible characters alone left out (a blocklist's term
    in another script, or with diacritics, which tell its words apart: "g\u00f6t" is not "got"). `markup`:
    where the text holds Markdown emphasis, HTML tags or words joined by '-' or '_', it is read again as
    rendered ("**Ignore** all <b>previous</b> instructions", "ignore_all_previous_instructions")."""
    found = _read(text, search, latin)
    if markup and marked(text):
        bare, kept = _without(text, _MARKUP)
        found = union(found, _back(_read(_JOINED.sub(" ", bare), search, latin), kept))
    return found


def marked(text: str) -> bool:
    r"""Whether `read(..., markup=True)` reads `text` a second time, as rendered: it holds one of `*~`<` or
    a word joined by '-' or '_' (`\w[-_]\w`). Found by substring searches where it can be (the pattern
    took 900 us over 16k characters of prose, on the event loop, for each rule and the guard's weighing)."""
    if "*" in text or "~" in text or "`" in text or "<" in text:
        return True
    if "-" not in text and "_" not in text:
        return False
    if not text.isascii():
        return _JOINED_WORDS.search(text) is not None
    shape = text.encode().translate(_SHAPES)
    return any(join in shape for join in _JOINS)


def _read(text: str, search: Search, latin: bool) -> list[Finding]:
    if text.isascii():
        return search(text)
    table = lookalikes() if latin else {}
    found = _unseen(translate(text, table), search, latin)
    if _TAG.search(text) is not None:
        found = union(found, _unseen(translate(translate(text, _TAGS), table), search, latin))
    return found


def _unseen(text: str, search: Search, latin: bool) -> list[Finding]:
    """`search`'s findings with invisible characters (and, for `latin`, combining marks) left out, and again
    with the breaks among them as spaces."""
    ways = [_IGNORABLE]
    if _BREAK.search(text) is not None:
        ways.append(_BREAK)
    drop = (_scan()["marks"], _IGNORABLE) if latin else (_IGNORABLE,)
    found: list[Finding] = []
    for way in ways:
        spaced = text if way is _IGNORABLE else translate(text, _BREAKS)
        kept_text, kept = _without(spaced, *drop)
        if latin:
            kept_text = _latin(kept_text)
        found = union(found, _back(search(kept_text), kept))
    return found


def _without(text: str, *patterns: re.Pattern[str]) -> tuple[str, list[int] | None]:
    """`text` without the characters `patterns` match, and where each character left came from in `text`,
    then the text's length (None: nothing was left out)."""
    drop = [m.span() for p in patterns for m in p.finditer(text)]
    if not drop:
        return text, None
    drop.sort()
    kept: list[int] = []
    parts: list[str] = []
    at = 0
    for start, end in drop:
        if start > at:
            kept.extend(range(at, start))
            parts.append(text[at:start])
        at = max(at, end)
    kept.extend(range(at, len(text) + 1))
    parts.append(text[at:])
    return "".join(parts), kept


def _back(found: list[Finding], kept: list[int] | None) -> list[Finding]:
    """Findings in a text `_without` made, as spans of the text it was made from, with what was left out
    after their last character (its marks: no mark is left behind a redaction)."""
    if kept is None:
        return found
    return [Finding(f.kind, kept[f.start], kept[f.end]) for f in found if f.end > f.start]


def without_invisible(text: str) -> str:
    """`text` without its invisible characters (a blocklist's term written in another script, read as texts
    are for it)."""
    return _IGNORABLE.sub("", text)


def union(first: list[Finding], second: list[Finding]) -> list[Finding]:
    """The findings of two readings, sorted, those that overlap joined into one span (the earlier's kind): a
    phone number one reading finds from its "+1" and the other from its area code is redacted whole. With
    no second reading, the first as it is."""
    if not first or not second:
        return first or second
    out: list[Finding] = []
    for f in sorted(first + second, key=lambda f: (f.start, f.end)):
        if out and f.start < out[-1].end:
            out[-1] = Finding(out[-1].kind, out[-1].start, max(out[-1].end, f.end))
        else:
            out.append(f)
    return out


def translate(text: str, table: dict[int, str]) -> str:
    """`text.translate(table)` in parts of CHUNK characters (a character at a time: the GIL is held through
    each call)."""
    if len(text) <= CHUNK:
        return text.translate(table)
    return "".join([text[i:i + CHUNK].translate(table) for i in range(0, len(text), CHUNK)])
