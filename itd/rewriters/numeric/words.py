"""Number reading and writing for the numeric rewriter: number words, the constants a solution may use
unstated, the number tokens of a text and their formatting (thousands commas, `$`, cents, words)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from itd.rewriters.chain import number_value
from itd.rewriters.difficulty import decimal_places as _decimal_places

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
WORD_VALUE = {w: i for i, w in enumerate(_UNITS)} | {w: 10 * i for i, w in enumerate(_TENS) if w}
ORDINALS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "fourth": 4, "fourths": 4, "quarter": 4,
             "quarters": 4, "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7,
             "eighth": 8, "eighths": 8, "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10}
MULTIPLES = {"twice": 2, "double": 2, "doubled": 2, "doubles": 2, "pair": 2, "pairs": 2, "couple": 2, "triple": 3,
              "tripled": 3, "triples": 3, "thrice": 3, "quadruple": 4, "quadrupled": 4, "once": 1,
              "dozen": 12, "dozens": 12, "hundred": 100, "hundreds": 100, "thousand": 1000, "percent": 100,
              "score": 20, "halved": 2}
_WORD_RE = re.compile(
    r"\b(?:(?P<tens>twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:-(?P<unit>one|two|three|four|five|six|"
    r"seven|eight|nine))?|(?P<small>zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
    r"fourteen|fifteen|sixteen|seventeen|eighteen|nineteen))\b",
    re.I,
)
CONST_WORD_RE = re.compile(r"\b(" + "|".join(sorted([*ORDINALS, *MULTIPLES], key=len, reverse=True)) + r")\b", re.I)


def number_words(n: int) -> str:
    """English words for 0 <= n <= 99 ("forty-two")."""
    if not 0 <= n <= 99:
        raise ValueError(f"no words for {n}")
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens] + ("-" + _UNITS[unit] if unit else "")


UNITS_TABLE: dict[str, tuple[int, ...]] = {
    "hour": (60, 3600), "minute": (60,), "day": (24,), "week": (7,), "year": (12, 52, 365), "month": (30,),
    "foot": (12,), "feet": (12,), "yard": (3, 36), "mile": (5280,), "gallon": (4, 8, 16, 128), "quart": (2, 4, 32),
    "pint": (2, 16), "cup": (8,), "pound": (16,), "ton": (2000,), "kilogram": (1000,), "kg": (1000,),
    "liter": (1000,), "litre": (1000,), "meter": (100, 1000), "metre": (100, 1000), "kilometer": (1000,),
    "dollar": (100,), "dozen": (12,),
}
"""Unit conversions: "1.25 hours" may be used as 75 (minutes), "15 gallons" as 120 (pints)."""


def unit_key(word: str) -> str:
    w = word.lower()
    if w in UNITS_TABLE:
        return w
    for suffix in ("es", "s"):
        if w.endswith(suffix) and w[: -len(suffix)] in UNITS_TABLE:
            return w[: -len(suffix)]
    return ""


KNOWN_CONSTANTS: dict[str, tuple[str, ...]] = {
    r"\bquarters\b": ("25", "0.25"), r"\bdimes?\b": ("10", "0.1"), r"\bnickels?\b": ("5", "0.05"),
    r"\bpenn(?:y|ies)\b": ("1", "0.01"), r"\btwenties\b": ("20",), r"\btens\b": ("10",), r"\bfives\b": ("5",),
    r"\balphabet\b": ("26",), r"\bfebruary\b": ("28", "29"),
    r"\b(?:april|june|september|november)\b": ("30",),
}
"""What some words mean in numbers: coins and bills, the alphabet, the days of a month."""

CONVERSIONS: dict[tuple[str, str], Fraction] = {
    (small, big): Fraction(f) for small, big, f in (
        ("feet", "yard", 3), ("foot", "yard", 3), ("inche", "foot", 12), ("inch", "foot", 12), ("inche", "feet", 12),
        ("inche", "yard", 36), ("minute", "hour", 60), ("second", "minute", 60), ("second", "hour", 3600),
        ("hour", "day", 24), ("day", "week", 7), ("day", "year", 365), ("week", "year", 52), ("month", "year", 12),
        ("ounce", "pound", 16), ("oz", "pound", 16), ("cent", "dollar", 100), ("quart", "gallon", 4),
        ("pint", "gallon", 8), ("cup", "gallon", 16), ("pint", "quart", 2), ("cup", "quart", 4), ("cup", "pint", 2),
        ("feet", "mile", 5280), ("centimeter", "meter", 100), ("cm", "meter", 100), ("meter", "kilometer", 1000),
        ("gram", "kilogram", 1000), ("milliliter", "liter", 1000), ("ml", "liter", 1000), ("pound", "ton", 2000),
        ("egg", "dozen", 12), ("item", "dozen", 12), ("day", "month", 30), ("week", "month", 4),
    )
}
CONVERSION = re.compile(
    r"(?:\b(?:1|one|an?|each|every|per)\s+(?P<big2>[a-z]+)\s*(?:=|is|are|has|have|equals|contains)?\s*)?"
    r"\b(?P<n>\d+)\s*(?P<small>[a-z]+)\s*(?:/|per|in an?|in one|in 1|in|for each|for every|every|each|an?)?\s*"
    r"(?:1\s+)?(?P<big>[a-z]+)?", re.I)
"""Spelled-out conversions: "3 feet / 1 yard", "60 minutes in an hour", "1 foot = 12 inches"."""

ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
COMPARISON = re.compile(
    r"[<>≥≤]|\b(?:greater|larger|bigger|smaller|cheaper|better|best|maximi[sz]e|minimi[sz]e|higher|lower|exceeds?|"
    r"more expensive|less expensive|biggest|largest|smallest|highest|lowest|compare[ds]?|whichever)\b", re.I)

GENERIC_CONSTANTS: frozenset[Fraction] = frozenset(
    Fraction(x) for x in ("0", "1", "2", "3", "4", "5", "7", "10", "12", "24", "30", "31", "52", "60", "100", "365",
                          "1000", "3600", "1/100", "1/10", "1/2", "1/4", "3/4")
)
"""Numbers a solution may use without the question stating them (units, halves, percent, calendar)."""

# ---------------------------------------------------------------------------------------------------------------------
# number tokens

NUM_RE = re.compile(r"(?:(?<=\$)\d{1,3}(?:[ \xa0]\d{3})+(?!\d)|\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+")
"""A number as written: "1,000", "2.50", ".5", and "$400 000" (a space between thousands after a dollar sign)."""


def num_value(text: str) -> Fraction:
    return number_value(text)


@dataclass(slots=True)
class Style:
    commas: bool = False
    decimals: int = 0
    sep: str = ","  # the thousands separator: "," or " " ("$400 000")
    lead0: bool = True
    word: bool = False
    cap: bool = False


@dataclass(slots=True)
class NumberToken:
    start: int
    end: int
    text: str
    value: Fraction
    style: Style
    context: str = ""  # "" | fraction | time | ordinal | one | frac-word | scaled-word
    money: bool = False
    percent: bool = False
    scale: int = 1
    unit: str = ""  # the word after the number
    half_more: bool = False  # "three and a half"


def style_of(text: str) -> Style:
    dec = len(text.split(".", 1)[1]) if "." in text else 0
    sep = " " if re.search(r"\d[ \xa0]\d", text) else ","
    return Style(commas=sep in text, decimals=dec, lead0=not text.startswith("."), sep=sep)


def number_tokens(text: str, words: bool = True) -> list[NumberToken]:
    """Number tokens of `text` (digits and, when `words`, cardinal number words) with their context."""
    out: list[NumberToken] = []
    for m in NUM_RE.finditer(text):
        s, e = m.span()
        if s > 0 and (text[s - 1].isalpha() or text[s - 1] == "_" or text[s - 1].isdigit()):
            continue
        raw = m.group(0)
        tok = NumberToken(s, e, raw, num_value(raw), style_of(raw))
        before, after = text[max(0, s - 12):s], text[e:e + 16]
        if re.match(r"/\s?\d", after) or re.search(r"\d\s?/$", before):
            tok.context = "fraction"
        elif re.match(r":\d", after) or re.search(r"\d:$", before) or re.match(r"\s?(?:[ap]\.?m\b|[AP]\.?M\b|o'clock)", after):
            tok.context = "time"
        elif re.match(r"(?:st|nd|rd|th)\b", after):
            tok.context = "ordinal"
        elif before.endswith("#"):
            tok.context = "label"  # "horse #12"
        if not tok.context and re.match(r"\s+\d+\s?/\s?\d+", after):
            tok.context = "mixed"  # "3 1/2"
        tok.money = before.rstrip().endswith("$") or bool(re.search(r"\$\s?$", before))
        tok.percent = bool(re.match(r"\s?(?:%|percent\b|per cent\b)", after))
        sc = re.match(r"[\s-]?(million|billion|thousand|dozen)\b", after, re.I)
        if sc:
            tok.scale = {"million": 10**6, "billion": 10**9, "thousand": 1000, "dozen": 12}[sc.group(1).lower()]
        out.append(tok)
    if words:
        for m in _WORD_RE.finditer(text):
            s, e = m.span()
            if m.group("tens"):
                v = WORD_VALUE[m.group("tens").lower()] + (WORD_VALUE[m.group("unit").lower()] if m.group("unit") else 0)
            else:
                v = WORD_VALUE[m.group("small").lower()]
            raw = m.group(0)
            tok = NumberToken(s, e, raw, Fraction(v), Style(word=True, cap=raw[0].isupper()))
            after = text[e:e + 20]
            if re.match(r"[\s-](?:" + "|".join(ORDINALS) + r")\b", after, re.I):
                tok.context = "frac-word"
            elif re.match(r"[\s-](?:hundred|thousand|million|billion)\b", after, re.I):
                tok.context = "scaled-word"
            elif v <= 1:
                tok.context = "one"
            elif s > 0 and text[s - 1] == "-" and s > 1 and text[s - 2].isalpha():
                tok.context = "one"  # "forty-two" handled above; "x-two" compounds are names
            tok.percent = bool(re.match(r"\s?(?:%|percent\b)", after))
            out.append(tok)
        out.sort(key=lambda t: t.start)
    for tok in out:
        after = text[tok.end:tok.end + 40]
        m = re.match(r"[\s-]*([A-Za-z]+)", after)
        tok.unit = m.group(1).lower() if m else ""
        tok.half_more = bool(re.match(r"\s+(?:[a-z]+\s+)?and a half\b", after))
    return out


def format_number(value: Fraction, style: Style | None = None) -> str | None:
    """`value` written in the style of an original token: words, thousands commas, cents, no leading zero.
    None when it cannot be written that way (a non-terminating decimal, a word for a non-integer)."""
    st = style or Style()
    if st.word:
        if value.denominator != 1 or not 0 <= value <= 99:
            return None
        w = number_words(int(value))
        return w[0].upper() + w[1:] if st.cap else w
    neg = value < 0
    v = -value if neg else value
    digits = _decimal_places(v)
    if digits is None:
        return None
    if st.decimals == 2 and digits <= 2:
        digits = 2
    scaled = int(v * 10**digits)
    ip, fp = divmod(scaled, 10**digits)
    s = f"{ip:,}".replace(",", st.sep) if st.commas else str(ip)
    if digits:
        s += "." + str(fp).zfill(digits)
        if not st.lead0 and ip == 0:
            s = s[1:]
    return ("-" if neg else "") + s


