"""The semantic cache's precision guard (pipeline/cache_guard.py), class by class: near misses that
embeddings score as the same request (numbers, negations, code, names, bound words, one word swapped) are
told apart, and paraphrases that differ only in stopwords, casing, punctuation, contractions, word order or
inflection are not. Texts are given as the cache normalises them (pipeline/semantic_cache.normalise)."""

from __future__ import annotations

import pytest

from llmops.pipeline.cache_guard import Signature, WordRule, conflict, number, signature
from llmops.pipeline.semantic_cache import normalise


def why(a: str, b: str, words: WordRule = "swap") -> str | None:
    """The guard's verdict on two user messages, both ways round (it must be symmetric)."""
    sa, sb = signature(normalise([("user", a)])), signature(normalise([("user", b)]))
    forward, backward = conflict(sa, sb, words), conflict(sb, sa, words)
    assert forward == backward, (a, b, forward, backward)
    return forward


@pytest.mark.parametrize(("a", "b"), [
    ("What is 2+2?", "What is 2+3?"),
    ("Is 3.14 greater than pi?", "Is 3.15 greater than pi?"),
    ("How much is 1e5 in decimal?", "How much is 1e6 in decimal?"),
    ("What day of the week was 2024-03-01?", "What day of the week was 2024-03-02?"),
    ("What is two plus two?", "What is two plus three?"),
    ("Return the 10th Fibonacci number", "Return the 20th Fibonacci number"),
    ("What is 15% of 200?", "What is 15% of 300?"),
    ("What is 2^10?", "What is 10^2?"),  # the same numbers in another order
    ("Who was the first president of Brazil?", "Who was the second president of Brazil?"),
])
def test_numbers_must_agree(a: str, b: str) -> None:
    assert why(a, b) == "number"


@pytest.mark.parametrize(("a", "b"), [
    ("What is 2+2?", "what is 2 + 2"),
    ("What is 2+2?", "What is two plus two?"),
    ("How much is 1e5?", "How much is 100000?"),
    ("How much is 100,000?", "how much is 100000.0"),
    ("Is 3.14 greater than pi?", "is 3.140 greater than pi"),
])
def test_the_same_numbers_written_otherwise_agree(a: str, b: str) -> None:
    assert why(a, b) is None


def test_numbers_have_one_canonical_form() -> None:
    assert number("100000") == number("1e5") == number("100,000.0") == number("1E+5") == "1e6"
    assert number("3.14") == "314e1" != number("31.4")
    assert number("0.05") != number("0.5")
    assert number("007") == number("7")
    assert number("0") == number("0.000") == "0"
    assert number("1e" + "9" * 50) != number("1e" + "9" * 49)  # a huge exponent is compared as written


@pytest.mark.parametrize(("a", "b"), [
    ("Is it safe to eat raw chicken?", "Is it not safe to eat raw chicken?"),
    ("Why did the build succeed?", "Why didn't the build succeed?"),
    ("Can I take ibuprofen with food?", "Can I take ibuprofen without food?"),
    ("Which foods contain gluten?", "Which foods contain no gluten?"),
    ("Show users who have logged in this week", "Show users who have never logged in this week"),
    ("Why can I log in?", "Why cannot I log in?"),
    ("Why does my car start?", "Why won\u2019t my car start?"),  # a typographic apostrophe
])
def test_negations_must_agree(a: str, b: str) -> None:
    assert why(a, b) == "negation"


@pytest.mark.parametrize(("a", "b"), [
    ("Isn't Pluto a planet anymore?", "Is Pluto not a planet anymore?"),
    ("Why won't my car start?", "Why will my car not start?"),
    ("I don't understand recursion, can you explain it?", "I do not understand recursion. Can you explain it?"),
])
def test_contracted_negations_agree_with_spelt_out_ones(a: str, b: str) -> None:
    assert why(a, b) is None


@pytest.mark.parametrize(("a", "b"), [
    ("What does os.path.join do?", "What does os.path.split do?"),
    ("Explain == and === in JavaScript", "Explain = and == in JavaScript"),
    ("What does `git reset --hard` do?", "What does `git reset --soft` do?"),
    ("Why does my_function return None?", "Why does my_func return None?"),
    ("Download https://example.com/a.json please", "Download https://example.com/b.json please"),
    ("Send a reminder to alice@example.com", "Send a reminder to bob@example.com"),
    ("Is C++ hard to learn?", "Is C# hard to learn?"),
])
def test_code_and_addresses_must_agree(a: str, b: str) -> None:
    assert why(a, b) == "code"


@pytest.mark.parametrize(("a", "b"), [
    ("What is the capital of Austria?", "What is the capital of Australia?"),
    ("what is the capital of austria", "What is the capital of Australia?"),  # one side's capital suffices
    ("What does HTTP stand for?", "What does HTTPS stand for?"),
    ("How do I use useEffect in React?", "How do I use useState in React?"),
    ("Translate 'good morning' into Spanish", "Translate 'good evening' into Spanish"),
    ("How far is Paris from London?", "How far is Paris from Berlin?"),
])
def test_names_must_be_held_by_both(a: str, b: str) -> None:
    assert why(a, b) == "name"


@pytest.mark.parametrize(("a", "b"), [
    ("What is the capital of Austria?", "what is the capital of austria"),  # casing
    ("How do I center a div in CSS?", "CSS: how to center a div?"),  # a sentence's first word is no name
    ("Translate 'good morning' into Spanish", "How do you translate good morning into Spanish?"),
    ("What's the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by whom?"),
    ("How do I learn JavaScript?", "how do i learn javascript"),
])
def test_names_held_by_both_in_any_case_agree(a: str, b: str) -> None:
    assert why(a, b) is None


@pytest.mark.parametrize(("a", "b"), [
    ("Convert 10 miles to kilometres", "Convert 10 kilometres to miles"),
    ("Convert 100 Fahrenheit to Celsius", "Convert 100 Celsius to Fahrenheit"),
    ("Convert 3 cups to millilitres", "Convert 3 tablespoons to millilitres"),
    ("Translate this from german to french", "Translate this from french to german"),
    ("Is python faster than java?", "Is java faster than python?"),
])
def test_words_bound_to_a_number_or_a_direction_must_agree(a: str, b: str) -> None:
    assert why(a, b) == "order"


def test_a_bound_word_may_be_reworded_where_only_one_text_binds_it() -> None:
    assert why("Convert 10 miles to kilometres", "How many kilometres is 10 miles?") is None
    assert why("How do I make a cup of tea?", "How to make a cup of tea") is None


@pytest.mark.parametrize(("a", "b"), [
    ("How do I sort a dictionary by value in Python?", "How do I sort a dictionary by key in Python?"),
    ("How many megabytes are in a gigabyte?", "How many megabytes are in a terabyte?"),
    ("When was Einstein born?", "Where was Einstein born?"),
    ("What is the date 30 days after 2023-01-15?", "What is the date 30 days before 2023-01-15?"),
    ("what currency does japan use", "what currency does china use"),
])
def test_one_content_word_swapped_for_another_conflicts(a: str, b: str) -> None:
    assert why(a, b) == "word"
    assert why(a, b, "off") is None  # what the rule adds to the others


def test_the_word_rules_from_lenient_to_strict() -> None:
    added = ("What is the capital of France?", "what's the capital city of France")
    reworded = ("Write a haiku about autumn.", "Compose a haiku on the subject of autumn.")
    assert [why(*added, rule) for rule in ("off", "swap", "substitution", "any")] == [None, None, None, "word"]
    assert [why(*reworded, rule) for rule in ("off", "swap", "substitution", "any")] == [None, None, "word", "word"]


@pytest.mark.parametrize(("a", "b"), [
    ("Hey, how do I boil an egg?", "how do I boil an egg"),  # stopwords
    ("Could you please summarise this article for me?", "Summarise this article, please."),
    ("What is the meaning of life???", "what is the meaning of life"),  # punctuation
    ("What's the weather like on Mars?", "What is the weather like on Mars?"),  # contraction
    ("Is it safe to eat raw eggs?", "Is it safe to eat eggs raw?"),  # word order
    ("How do I read a CSV file in pandas?", "In pandas, how do I read a CSV file?"),
    ("Tell me a joke about cats.", "Tell me a joke about a cat."),  # inflection
    ("List three benefits of exercise.", "List three benefits of exercising."),
    ("What are the health benefits of green tea?", "What are green tea's health benefits?"),
    ("What does `git rebase -i` do?", "what does `git rebase -i` do"),
    ("Is 97 a prime number?", "Is 97 prime?"),
])
def test_paraphrases_pass(a: str, b: str) -> None:
    assert why(a, b) is None


def test_every_message_and_role_is_read() -> None:
    system = ("system", "You answer in English. Use at most 3 sentences.")
    a = signature(normalise([system, ("user", "Is it safe to eat raw chicken?")]))
    b = signature(normalise([system, ("user", "Is it not safe to eat raw chicken?")]))
    four = signature(normalise([("system", "You answer in English. Use at most 4 sentences."),
                                ("user", "Is it safe to eat raw chicken?")]))
    assert conflict(a, b) == "negation"
    assert conflict(a, four) == "number"
    assert conflict(a, a) is None


def test_a_signature_survives_storage_and_refuses_other_versions() -> None:
    sig = signature(normalise([("user", "Does `os.path.join` take 2 \u00e9l\u00e9ments, not Paths? See https://x.y/z")]))
    assert Signature.loads(sig.dumps()) == sig
    assert sig.dumps().isascii()  # counted as bytes by the in-process index
    assert Signature.loads(sig.dumps().replace("[1,", "[0,", 1)) is None  # another version
    for broken in (None, "", "null", "[1]", "not json", '{"a": 1}', '[1,[],[],"x",[],[],[]]'):
        assert Signature.loads(broken) is None


@pytest.mark.parametrize("text", [
    "", "?", "...", "''", "``", "\u201c\u201d", "-", "'tis the season", "dogs' bowls", "1e" + "9" * 5000,
    "9" * 10_000, "a" * 10_000, "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059", "x_" * 5000,
    "'" * 1000, "$5 / 3 = ?", "\u0130stanbul", "e.g. U.S. i.e.",
])
def test_any_text_has_a_signature(text: str) -> None:
    sig = signature(normalise([("user", text)]))
    assert Signature.loads(sig.dumps()) == sig
    assert conflict(sig, sig) is None
