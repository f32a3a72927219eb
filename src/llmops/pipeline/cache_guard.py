"""The semantic cache's precision guard: before a stored answer is served for a request that embeds close to
the stored one's, the two texts must agree on what sentence embeddings are known to be blind to. Measured on
all-MiniLM-L6-v2 (bench/semantic_cache.py), "is it safe" and "is it not safe" score 0.995, "convert 10 miles
to kilometres" and "10 kilometres to miles" 0.995, "2024-03-01" and "2024-03-02" 0.996: a threshold cannot
separate them from paraphrases, so the guard looks at the tokens themselves. Two texts conflict on:

- number: the numbers, in order, wherever written ("2+3", "3.14", "1e5" = "100000", "1,000", dates, "10th",
  number words "two", "first");
- code: what is not a word of the language, in order: symbols ("+", "==", "--"), identifiers with digits,
  underscores or dots (`my_func`, `os.path.join`), URLs and e-mail addresses, exactly as written;
- negation: how many negations ("not", "n't", "no", "never", "without", ...) each holds;
- name: a word written as a name in one (capitalised inside a sentence, an acronym, camelCase, quoted or in
  backticks) that the other does not hold in any case ("Austria" / "Australia", "HTTP" / "HTTPS");
- order: a word bound to another role: after another number ("10 miles" / "10 kilometres"), or after "to",
  "from", "than" or "per" where both texts use that marker ("to miles" / "to kilometres");
- word (the general rule, `WordRule`): content words (not function words; compared by stem, so "cats"
  matches "cat"). "swap", the default: conflict when each text holds exactly one content word the other
  lacks, one word standing for another ("sort by value" / "sort by key", "gigabyte" / "terabyte", "when" /
  "where", "austria" / "australia" written in lower case). Words only added or dropped ("the capital city
  of") pass, and so do rewordings of more than one word: the embedding tells those apart itself (the bench's
  near misses that differ in several words score 0.45-0.72), where one word in an otherwise equal sentence
  moves it little. A synonym swapped alone ("largest" / "biggest") is a miss: the price of the rule.

Casing: the cache's normalised text keeps the request's case (it lower-cases what it embeds), so names are
seen where the writer capitalised them; a request written all in lower case is checked by the other rules.

A `Signature` is what one text contributes (computed once per request, stored with its entry as `dumps()`),
and `conflict(a, b)` compares two. Both are linear in the text's length (one pass over its whitespace-separated
chunks, set and tuple comparisons): about 1 us a word to read (300 us for MiniLM's longest input, 256
tokens: the embeddings model refuses longer ones before the guard reads them), a few us to compare."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

Reason = Literal["number", "code", "negation", "name", "order", "word"]
WordRule = Literal["off", "swap", "substitution", "any"]
VERSION = 1  # of the signature's meaning: a stored signature of another version is not trusted (a miss)

# Function words: carry no content of their own (a text may add or drop them). Words of direction or
# polarity ("before", "after", "more", "less", "up", "down") and "when"/"where" are content.
def _words(text: str) -> list[str]:
    return text.split()


STOPWORDS = frozenset(_words("""
a an the this that these those some any each every all both either such what which who whom whose how why
i me my mine myself we us our ours you your yours he him his she her hers it its they them their theirs one's
is are was were be been being am do does did doing done have has had having can could will would shall should
many much may might must ought of in on at by for with about as like via within between among through during
and or but if then so because while also just only really actually very quite please kindly thanks thank
hi hey hello ok okay there here tell let lets s t d ll m re ve
"""))
NEGATIONS = frozenset(_words("not no never none nobody nothing nowhere neither nor without cannot"))
_CONTRACTED = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}  # ca|n't, wo|n't
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"))}
NUMBER_WORDS.update({w: str(10 * i) for i, w in enumerate(_words("thirty forty fifty sixty seventy eighty ninety"), 3)})
NUMBER_WORDS.update({"hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
                     "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6",
                     "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10", "half": "0.5", "dozen": "12"})
SYMBOL_WORDS = {"plus": "+", "minus": "-"}
MARKERS = {"to": "to", "into": "to", "from": "from", "than": "than", "per": "per"}  # bind the next content word

_APOSTROPHE = "\u2019"  # the typographic apostrophe, as phones and word processors write "don't"
_QUOTES = "\"'`\u201c\u201d\u2018" + _APOSTROPHE
_CLOSE = _QUOTES + ")]}>"
_STRIP = ".,;:!?([{<" + _CLOSE
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)?")
_HYPHENATED = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)+")
_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+|www\.\S+|[^@\s]+@[^@\s]+\.\w+", re.IGNORECASE)
_ATOM = re.compile(r"(\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][+-]?\d+)?)(?:st|nd|rd|th)?|([^\W\d]\w*)|(\S)")
_CAMEL = re.compile(r"[a-z][A-Z]")


def number(text: str) -> str:
    """A number's canonical form, whatever its notation: digits and the decimal point's place
    ("100000", "1e5" and "100,000.0" are all "1e6"; "3.14" is "314e1", "0.05" "5e-1")."""
    mantissa, _, exponent = text.replace(",", "").lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits, point = whole + fraction, len(whole)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    if not digits:
        return "0"
    if exponent:
        if len(exponent) > 9:  # not worth the arithmetic: compared as written
            return f"{digits}e{point}e{exponent}"
        point += int(exponent)
    return f"{digits}e{point}"


def stem(word: str) -> str:
    """A light stemmer for English: plural, -ing, -ed, -ly and a final e off ("cats" = "cat", "exercising" =
    "exercise", "values" = "value"), no dictionary. Different words may meet ("news"/"new"): a stem only
    decides whether two texts hold the same word."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-2] if word.endswith(("ches", "shes", "xes", "sses")) else word[:-1]
    for suffix in ("ing", "ed", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]  # running -> run
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


@dataclass(frozen=True, slots=True)
class Signature:
    """What one text holds that the guard compares (see the module's docstring)."""

    numbers: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    negations: int = 0
    names: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()  # content words' stems, names included
    bound: frozenset[str] = frozenset()  # "marker:stem", the marker "to", "from", "than", "per" or "#number"

    def dumps(self) -> str:
        return json.dumps([VERSION, self.numbers, self.code, self.negations, sorted(self.names),
                           sorted(self.words), sorted(self.bound)], separators=(",", ":"))

    @classmethod
    def loads(cls, stored: str | None) -> Signature | None:
        """A stored signature; None when it is missing, of another version or unreadable."""
        try:
            version, numbers, code, negations, names, words, bound = json.loads(stored or "null")
            if version != VERSION:
                return None
            return cls(tuple(numbers), tuple(code), int(negations), frozenset(names), frozenset(words),
                       frozenset(bound))
        except (TypeError, ValueError):
            return None


@dataclass
class _Reader:
    """One pass over a text's chunks, collecting its signature's parts."""

    numbers: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    negations: int = 0
    names: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    bound: set[str] = field(default_factory=set)
    marker: str | None = None  # binds the next content word
    quoted: bool = False

    def chunk(self, raw: str, initial: bool) -> None:
        if raw[:1] in _QUOTES:
            self.quoted = True
        token = raw.strip(_STRIP)
        if token:
            self.token(token, initial)
        if raw.rstrip(".,;:!?")[-1:] in _QUOTES:
            self.quoted = False

    def token(self, token: str, initial: bool) -> None:
        if _WORD.fullmatch(token):
            self.word(token, initial)
        elif _HYPHENATED.fullmatch(token):
            for i, part in enumerate(token.split("-")):
                self.word(part, initial and i == 0)
        elif _ADDRESS.fullmatch(token):
            self.code.append(token.rstrip(".,;:!?"))
            self.marker = None
        else:
            self.atoms(token)

    def atoms(self, token: str) -> None:
        for digits, ident, symbol in _ATOM.findall(token):
            if digits:
                self.numbers.append(number(digits))
                self.marker = "#" + self.numbers[-1]
                continue
            self.code.append(ident or symbol)
            self.marker = None

    def word(self, token: str, initial: bool) -> None:
        lower = token.lower().replace(_APOSTROPHE, "'")
        if lower.endswith("n't"):
            self.negations += 1
            lower = _CONTRACTED.get(lower[:-3], lower[:-3])
        elif "'" in lower:
            lower = lower.split("'", 1)[0] if lower.rsplit("'", 1)[1] in ("s", "re", "ve", "ll", "d", "m") \
                else lower.replace("'", "")
        if lower in NEGATIONS:
            self.negations += 1
            return
        if lower in NUMBER_WORDS:
            self.numbers.append(number(NUMBER_WORDS[lower]))
            self.marker = "#" + self.numbers[-1]
            return
        if lower in SYMBOL_WORDS:
            self.code.append(SYMBOL_WORDS[lower])
            self.marker = None
            return
        if lower in MARKERS:
            self.marker = MARKERS[lower]
            return
        if lower in STOPWORDS:
            return
        stemmed = lower if len(token) > 1 and token.isupper() else stem(lower)  # "HTTPS" is no plural
        self.words.add(stemmed)
        if self.quoted or _named(token, initial):
            self.names.add(stemmed)
        if self.marker is not None:
            self.bound.add(f"{self.marker}:{stemmed}")
            self.marker = None

    def signature(self) -> Signature:
        return Signature(tuple(self.numbers), tuple(self.code), self.negations, frozenset(self.names),
                         frozenset(self.words), frozenset(self.bound))


def _named(token: str, initial: bool) -> bool:
    """Written as a name: capitalised inside a sentence, an acronym ("HTTP") or camelCase ("useEffect")."""
    if len(token) > 1 and token.isupper():
        return True
    return bool(_CAMEL.search(token)) or (not initial and token[:1].isupper())


def signature(text: str) -> Signature:
    """One text's signature: its chunks read once, left to right. A chunk after one that ends a sentence
    (".", "!", "?", ":", the role's "user:") starts one, and its capital does not make it a name."""
    reader, initial = _Reader(), True
    for raw in text.split():
        reader.chunk(raw, initial)
        initial = raw.rstrip(_CLOSE)[-1:] in ".!?:" if raw.rstrip(_CLOSE) else initial
    return reader.signature()


def conflict(a: Signature, b: Signature, words: WordRule = "swap") -> Reason | None:
    """Why `a` and `b` may not share an answer, or None when they may (module docstring)."""
    if a.numbers != b.numbers:
        return "number"
    if a.code != b.code:
        return "code"
    if a.negations != b.negations:
        return "negation"
    if not (a.names <= b.words and b.names <= a.words):
        return "name"
    if _rebound(a, b):
        return "order"
    if words == "off":
        return None
    only_a, only_b = a.words - b.words, b.words - a.words
    if words == "any":
        return "word" if only_a or only_b else None
    if words == "substitution":
        return "word" if only_a and only_b else None
    return "word" if len(only_a) == 1 and len(only_b) == 1 else None


def _rebound(a: Signature, b: Signature) -> bool:
    """A marker both texts use binds different words ("to miles" / "to kilometres")."""
    markers_a = {entry.split(":", 1)[0] for entry in a.bound}
    markers_b = {entry.split(":", 1)[0] for entry in b.bound}
    shared = markers_a & markers_b
    return bool(shared) and {e for e in a.bound if e.split(":", 1)[0] in shared} != \
        {e for e in b.bound if e.split(":", 1)[0] in shared}
