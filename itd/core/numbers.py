"""Reading the numbers a text states: digits, number words, fractions, percentages, money, multipliers.

`read_numbers` returns every quantity of a text with its value (an exact `Fraction`), how it was written and the
unit of measure attached to it ("3 hours", "$2", "15%", "5-mile"). English number words are parsed by the
`text2num` package ("twenty-five", "two hundred and forty", "eleven and twelve" as two numbers); the rest are
rules of this module: fractions ("a third", "two-thirds", "3/4", "1 1/2", "one and a half"), multipliers
("twice", "half", "a dozen", "double"), ordinals ("the 3rd day", "third") and scales after digits
("1.5 million").

`units_in` counts the units of measure a text mentions anywhere, compound ones split ("mph" is miles and hours,
"per hour", "hourly" and "$10 an hour" mention hours), so a check can tell whether a unit was renamed throughout.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from text_to_num import alpha2digit

__all__ = ["MAX_DIGITS", "Number", "read_numbers", "numbers_in", "with_digits", "answer_value", "same_number",
           "equivalent", "format_value", "units_in", "unit_dimension", "UNITS", "FORMS"]

FORMS = ("digits", "words", "fraction", "multiplier", "ordinal")

# unit word -> (canonical unit, dimension); plural forms are added below
_UNIT_TABLE = {
    "second": ("second", "time"), "sec": ("second", "time"), "secs": ("second", "time"),
    "minute": ("minute", "time"), "min": ("minute", "time"), "mins": ("minute", "time"),
    "hour": ("hour", "time"), "hr": ("hour", "time"), "hrs": ("hour", "time"),
    "day": ("day", "time"), "week": ("week", "time"), "month": ("month", "time"), "year": ("year", "time"),
    "decade": ("decade", "time"),
    "millimeter": ("mm", "length"), "millimetre": ("mm", "length"), "mm": ("mm", "length"),
    "centimeter": ("cm", "length"), "centimetre": ("cm", "length"), "cm": ("cm", "length"),
    "meter": ("m", "length"), "metre": ("m", "length"), "m": ("m", "length"),
    "kilometer": ("km", "length"), "kilometre": ("km", "length"), "km": ("km", "length"),
    "inch": ("inch", "length"), "inches": ("inch", "length"), "foot": ("foot", "length"), "feet": ("foot", "length"),
    "ft": ("foot", "length"), "yard": ("yard", "length"), "yd": ("yard", "length"), "mile": ("mile", "length"),
    "gram": ("g", "mass"), "g": ("g", "mass"), "kilogram": ("kg", "mass"), "kg": ("kg", "mass"),
    "pound": ("pound", "mass"), "lb": ("pound", "mass"), "lbs": ("pound", "mass"), "ounce": ("ounce", "mass"),
    "oz": ("ounce", "mass"), "ton": ("ton", "mass"), "tonne": ("ton", "mass"),
    "milliliter": ("ml", "volume"), "millilitre": ("ml", "volume"), "ml": ("ml", "volume"),
    "liter": ("liter", "volume"), "litre": ("liter", "volume"), "gallon": ("gallon", "volume"),
    "quart": ("quart", "volume"), "pint": ("pint", "volume"),
    "dollar": ("dollar", "money"), "cent": ("cent", "money"), "euro": ("euro", "money"), "buck": ("dollar", "money"),
    "percent": ("percent", "ratio"), "%": ("percent", "ratio"),
    "degree": ("degree", "temperature"),
    "mph": ("mph", "speed"), "kph": ("kph", "speed"), "km/h": ("kph", "speed"),
}
UNITS: dict[str, tuple[str, str]] = dict(_UNIT_TABLE)
for _w, _u in _UNIT_TABLE.items():
    if len(_w) > 3 and not _w.endswith("s"):
        UNITS.setdefault(_w + "s", _u)
UNITS["centuries"] = UNITS["century"] = ("century", "time")
_COMPOUNDS = {"mph": ("mile", "hour"), "kph": ("km", "hour")}
_ADVERBS = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year",
            "annually": "year", "annual": "year"}
_CURRENCY = {"$": "dollar", "€": "euro", "£": "pound sterling"}
# words that may stand between a number and its unit: "3 more hours", "a 5-mile long", "2 square feet"
_FILLERS = {"more", "fewer", "less", "extra", "additional", "full", "whole", "square", "cubic", "long", "entire"}

_UNITS_WORDS = ("zero nought one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety").split()
_SCALE_WORDS = ("hundred", "thousand", "million", "billion")
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split())}
_ORDINALS.update({"thirtieth": 30, "fortieth": 40, "fiftieth": 50, "hundredth": 100, "thousandth": 1000})
_DENOMINATORS = {"half": 2, "halves": 2, "third": 3, "quarter": 4, "fourth": 4, "fifth": 5, "sixth": 6,
                 "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "twelfth": 12, "twentieth": 20, "hundredth": 100}
_DENOMINATORS.update({w + "s": d for w, d in list(_DENOMINATORS.items()) if not w.endswith("s")})
_MULTIPLIERS = {"twice": 2, "thrice": 3, "double": 2, "doubled": 2, "doubles": 2, "triple": 3, "tripled": 3,
                "triples": 3, "quadruple": 4, "quadrupled": 4, "half": Fraction(1, 2), "dozen": 12}

_WORD_NUMBER = "|".join(_UNITS_WORDS)
_NUMERATOR = rf"\d+|a|an|one|{_WORD_NUMBER}"
_TOKEN = re.compile(
    r"(?P<mixed>(?<![\w.,/])\d+\s+\d+/\d+(?![\d/]))"                        # 1 1/2
    r"|(?P<slash>(?<![\w.,/])\d+/\d+(?![\d/]))"                              # 3/4
    r"|(?P<num>(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])\.\d+)"  # 1,200.50  3.5  .5
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<sym>[$€£%])",
)
_SCALE_AFTER = {"thousand": 1000, "million": 10**6, "billion": 10**9}
_ORDINAL_SUFFIX = re.compile(r"(st|nd|rd|th)\b", re.I)


@dataclass(frozen=True, slots=True)
class Number:
    """One quantity of a text: `value` (exact), `text` as written, `form` (one of `FORMS`), the canonical
    `unit` attached to it (None when none; "percent" for 15% and "dollar" for $2), and its character span."""

    value: Fraction
    text: str
    form: str
    unit: str | None
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": format_value(self.value), "text": self.text, "form": self.form, "unit": self.unit}


def format_value(value: Fraction) -> str:
    """A value as a person writes it: "16", "0.5", "1/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    f = float(value)
    return f"{f:g}" if Fraction(f"{f:g}") == value else f"{value.numerator}/{value.denominator}"


def equivalent(a: Number, b: Number) -> bool:
    """Whether two quantities state the same amount: equal values, or a percentage and its fraction (50% and
    a half)."""
    if a.value == b.value:
        return True
    pa, pb = a.unit == "percent", b.unit == "percent"
    return pa != pb and (a.value / 100 == b.value if pa else b.value / 100 == a.value)


MAX_DIGITS = 1000
"""Most digits a number read from text may have; longer digit runs are not read as numbers (they could not be
item quantities, and converting them is slow or refused by Python's int-string limit)."""


def read_numbers(text: str) -> list[Number]:
    """Every quantity `text` states, in order (see the module docstring); digit runs over `MAX_DIGITS` digits are
    skipped."""
    tokens = [(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    out: list[Number] = []
    i = 0
    while i < len(tokens):
        kind, tok, start, end = tokens[i]
        low = tok.lower()
        if kind in ("mixed", "slash", "num") and sum(c.isdigit() for c in tok) > MAX_DIGITS:
            i += 1
            continue
        if kind in ("mixed", "slash"):
            whole, _, frac = tok.rpartition(" ")
            num, den = frac.split("/")
            if int(den) == 0:
                i += 1
                continue
            value = Fraction(int(num), int(den)) + (int(whole) if whole else 0)
            i = _emit(out, text, tokens, i, i + 1, value, "fraction")
            continue
        if kind == "num":
            value = Fraction(tok.replace(",", ""))
            j = i + 1
            if end < len(text) and _ORDINAL_SUFFIX.match(text, end):
                out.append(Number(value, text[start:end + 2], "ordinal", None, start, end + 2))
                i += 2 if j < len(tokens) and tokens[j][2] == end else 1
                continue
            frac = _fraction_after(tokens, i, value)
            if frac is not None:
                value, j = frac
                i = _emit(out, text, tokens, i, j, value, "fraction")
                continue
            if j < len(tokens) and tokens[j][1].lower() in _SCALE_AFTER and _adjacent(text, end, tokens[j][2]):
                value *= _SCALE_AFTER[tokens[j][1].lower()]
                j += 1
            i = _emit(out, text, tokens, i, j, value, "digits")
            continue
        if kind == "word":
            if low in _MULTIPLIERS and not (low == "half" and _preceded_by_and_a(tokens, i)):
                form = "fraction" if low == "half" else "multiplier"
                i = _emit(out, text, tokens, i, i + 1, Fraction(_MULTIPLIERS[low]), form)
                continue
            if low in ("a", "an", "one") and i + 1 < len(tokens) and tokens[i + 1][1].lower() in _DENOMINATORS \
                    and tokens[i + 1][1].lower() not in ("half", "halves") and _adjacent(text, end, tokens[i + 1][2]):
                # "a third", "one quarter" ("a half" and "one half" are read at "half")
                i = _emit(out, text, tokens, i, i + 2, Fraction(1, _DENOMINATORS[tokens[i + 1][1].lower()]), "fraction")
                continue
            scale_next = low in ("a", "an") and i + 1 < len(tokens) and tokens[i + 1][1].lower() in _SCALE_WORDS
            if scale_next or low in _UNITS_WORDS or low in _ORDINALS:
                j = _word_run_end(tokens, i, text)
                i = _read_words(out, text, tokens, i, j)
                continue
            if low in _ORDINALS:
                out.append(Number(Fraction(_ORDINALS[low]), tok, "ordinal", None, start, end))
        elif kind == "sym" and tok in _CURRENCY and i + 1 < len(tokens) and tokens[i + 1][0] == "num" \
                and _adjacent(text, end, tokens[i + 1][2]):
            before = len(out)
            i = _read_after_symbol(out, text, tokens, i)
            if len(out) > before:
                n = out[-1]
                out[-1] = Number(n.value, text[start:n.end], n.form, _CURRENCY[tok], start, n.end)
            continue
        i += 1
    return out


def numbers_in(text: str) -> set[float]:
    """The amounts `text` states (digits, number words, fractions, percentages, money, multipliers; ordinals left
    out), as floats."""
    return {float(n.value) for n in read_numbers(text) if n.form != "ordinal"}


_PLAIN_NUMERAL = re.compile(r"\d[\d,]*(?:\.\d+)?")


def with_digits(text: str) -> str:
    """`text` with every number written in words, or in digits with thousands commas, given in plain digits
    ("seven more than two thousand" -> "7 more than 2000", "1,000" -> "1000")."""
    parts, at = [], 0
    for n in read_numbers(text):
        if n.form == "words" or (n.form == "digits" and _PLAIN_NUMERAL.fullmatch(n.text)):
            parts += [text[at:n.start], format_value(n.value)]
            at = n.end
    return "".join(parts) + text[at:]


_ANSWER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def answer_value(answer: Any) -> Fraction | None:
    """A stated answer ("18", "18.0", "1,800", "$2.50", "-3", "18.") as an exact value; None when it is not a
    plain decimal number or has more than `MAX_DIGITS` digits."""
    s = re.sub(r"[,\s\xa0$]", "", str(answer)).rstrip(".")
    if sum(c.isdigit() for c in s) > MAX_DIGITS or not s.isascii() or not _ANSWER.fullmatch(s):
        return None
    return Fraction(s)


def same_number(a: Any, b: Any) -> bool:
    """Whether two answers, given as text ("18", "18.0", "1,800") or numbers, state the same number; answers that
    are not numbers are compared as stripped text."""
    x, y = answer_value(a), answer_value(b)
    if x is None or y is None:
        return str(a).strip() == str(b).strip()
    return abs(float(x) - float(y)) < 1e-9


def _adjacent(text: str, end: int, start: int) -> bool:
    """Only spaces or one hyphen between two tokens."""
    gap = text[end:start]
    return gap.strip(" \t") in ("", "-") and "\n" not in gap


def _preceded_by_and_a(tokens: list, i: int) -> bool:
    return i >= 2 and tokens[i - 1][1].lower() == "a" and tokens[i - 2][1].lower() == "and"


def _read_after_symbol(out: list[Number], text: str, tokens: list, i: int) -> int:
    """The number after a currency sign (with a scale: "$1.5 million")."""
    _, tok, start, end = tokens[i + 1]
    value = Fraction(tok.replace(",", ""))
    j = i + 2
    if j < len(tokens) and tokens[j][1].lower() in _SCALE_AFTER and _adjacent(text, end, tokens[j][2]):
        value *= _SCALE_AFTER[tokens[j][1].lower()]
        j += 1
    return _emit(out, text, tokens, i + 1, j, value, "digits")


def _fraction_after(tokens: list, i: int, value: Fraction) -> tuple[Fraction, int] | None:
    """"2 thirds", "3 quarters": a whole number followed by a denominator word."""
    if i + 1 < len(tokens) and tokens[i + 1][1].lower() in _DENOMINATORS and tokens[i + 1][1].lower() not in ("half",):
        den = _DENOMINATORS[tokens[i + 1][1].lower()]
        if value.denominator == 1 and (tokens[i + 1][1].lower().endswith("s") or value == 1):
            return value / den, i + 2
    return None


def _word_run_end(tokens: list, i: int, text: str) -> int:
    """End (exclusive) of the run of number words starting at token i ("two hundred and forty-five")."""
    j = i + 1
    while j < len(tokens):
        kind, tok, start, _ = tokens[j]
        low = tok.lower()
        if not _adjacent(text, tokens[j - 1][3], start):
            break
        if kind == "word" and (low in _UNITS_WORDS or low in _SCALE_WORDS or low in _DENOMINATORS or low in _ORDINALS):
            j += 1
        elif low == "and" and tokens[j - 1][1].lower() in _SCALE_WORDS and j + 1 < len(tokens) \
                and tokens[j + 1][1].lower() in _UNITS_WORDS:  # "two hundred and five", not "forty and one"
            j += 1
        else:
            break
    while j > i + 1 and tokens[j - 1][1].lower() == "and":
        j -= 1
    return j


def _read_words(out: list[Number], text: str, tokens: list, i: int, j: int) -> int:
    """Numbers of the word run tokens[i:j], parsed by text2num; a denominator word after a whole number makes a
    fraction ("two thirds"), an ordinal alone is an ordinal ("the third day")."""
    start, end = tokens[i][2], tokens[j - 1][3]
    words = text[start:end].replace("-", " ")
    parsed = alpha2digit(words, "en", threshold=0).split()
    pieces: list[tuple[str, Fraction]] = []
    for p in parsed:
        m = re.fullmatch(r"(\d+)(st|nd|rd|th)(s?)", p)
        if m:
            pieces.append(("ordinal", Fraction(int(m.group(1)))))
            if m.group(3):
                pieces[-1] = ("ordinal_plural", pieces[-1][1])
        elif p.isdigit():
            pieces.append(("words", Fraction(int(p))))
        elif p.lower() in _DENOMINATORS:  # "half", "quarter(s)" are not parsed by text2num
            pieces.append(("denominator_plural" if p.lower().endswith("s") else "denominator", Fraction(_DENOMINATORS[p.lower()])))
        elif p.lower() in ("a", "an"):
            pieces.append(("article", Fraction(1)))
    values: list[tuple[Fraction, str]] = []
    k = 0
    while k < len(pieces):
        form, v = pieces[k]
        nxt = pieces[k + 1] if k + 1 < len(pieces) else None
        # a fraction: "two thirds", "three quarters", "one third", "a quarter"; not "sixteen half-gallon jars"
        plural = nxt is not None and nxt[0] in ("ordinal_plural", "denominator_plural")
        if form in ("words", "article") and nxt and nxt[0].startswith(("ordinal", "denominator")) and \
                (plural or v == 1) and nxt[1] > 1 and int(nxt[1]) in _DENOMINATORS.values():
            values.append((v / nxt[1], "fraction"))
            k += 2
            continue
        if form == "words":
            values.append((v, "words"))
        elif form.startswith("ordinal"):
            values.append((v, "ordinal"))
        elif form.startswith("denominator") and v == 2:
            values.append((Fraction(1, 2), "fraction"))
        k += 1
    # "one and a half": the whole number and the fraction after the run are one amount
    if j + 1 < len(tokens) and tokens[j][1].lower() == "and" and tokens[j + 1][1].lower() in ("a", "an") \
            and j + 2 < len(tokens) and tokens[j + 2][1].lower() in ("half", "quarter", "third") and values \
            and values[-1][1] == "words":
        v, _ = values.pop()
        values.append((v + Fraction(1, _DENOMINATORS[tokens[j + 2][1].lower()]), "fraction"))
        j += 3
        end = tokens[j - 1][3]
    if not values:
        return j
    for n, (v, form) in enumerate(values):
        last = n == len(values) - 1
        if last and form != "ordinal":
            return _emit(out, text, tokens, i, j, v, form, text_span=(start, end))
        out.append(Number(v, text[start:end], form, None, start, end))
    return j


def _emit(out: list[Number], text: str, tokens: list, i: int, j: int, value: Fraction, form: str,
          text_span: tuple[int, int] | None = None) -> int:
    """Append the number of tokens[i:j] with the unit that follows it; return the index after what was read."""
    start, end = text_span or (tokens[i][2], tokens[j - 1][3])
    unit, j = _unit_after(text, tokens, j, end)
    if form == "digits" and i > 0 and tokens[i - 1][1] in _CURRENCY and _adjacent(text, tokens[i - 1][3], start):
        unit = _CURRENCY[tokens[i - 1][1]]
    out.append(Number(value, text[start:end], form, unit, start, end))
    return j


def _unit_after(text: str, tokens: list, j: int, end: int) -> tuple[str | None, int]:
    """The unit right after a number (percent signs and words, "hours", "km", "5-mile", "3 more hours")."""
    if end < len(text) and text[end:end + 1].isalpha():  # "5km", "10am"
        m = re.match(r"[A-Za-z/]+", text[end:])
        word = m.group().lower() if m else ""
        return (UNITS[word][0] if word in UNITS else None), j + (1 if j < len(tokens) and tokens[j][2] == end else 0)
    k = j
    prev_end = end
    for _ in range(2):
        if k >= len(tokens) or not _adjacent(text, prev_end, tokens[k][2]):
            return None, j
        word = tokens[k][1].lower()
        if word == "%":
            return "percent", k + 1
        if word == "percent":
            return "percent", k + 1
        if word == "per" and k + 1 < len(tokens) and tokens[k + 1][1].lower() == "cent":
            return "percent", k + 2
        if word in UNITS:
            return UNITS[word][0], j
        if word not in _FILLERS:
            return None, j
        prev_end = tokens[k][3]
        k += 1
    return None, j


_PER = re.compile(r"\b(?:per|an?|each|every)\s+(" + "|".join(sorted((w for w in UNITS if w.isalpha()), key=len, reverse=True)) + r")\b", re.I)
_WORDS_RE = re.compile(r"[A-Za-z]+(?:/[A-Za-z]+)?|[$€£%]")


def units_in(text: str) -> Counter:
    """How often each canonical unit is mentioned in `text`: units after numbers, "per hour", "an hour",
    "hourly", currency signs, and the parts of compound units ("mph": mile and hour)."""
    found: Counter = Counter()
    previous = ""
    for m in _WORDS_RE.finditer(text):
        w, before, previous = m.group().lower(), previous, m.group().lower()
        if w == "second" and before not in ("per", "a", "one", "each", "every") and not _ends_with_digit(text, m.start()):
            continue  # "the second day" is an ordinal
        if w in _CURRENCY:
            found[_CURRENCY[w]] += 1
        elif w in _ADVERBS:
            found[_ADVERBS[w]] += 1
        elif w in UNITS and (len(w) > 2 or w in ("mm", "cm", "km", "kg", "ml", "ft", "yd", "oz", "lb", "hr", "%")):
            unit = UNITS[w][0]
            found[unit] += 1
            for part in _COMPOUNDS.get(unit, ()):
                found[part] += 1
    return found


def unit_dimension(unit: str) -> str | None:
    """The dimension of a canonical unit ("hour" -> "time", "dollar" -> "money"), None when unknown."""
    if unit in _CURRENCY.values():
        return "money"
    return next((d for u, d in UNITS.values() if u == unit), None)


def _ends_with_digit(text: str, at: int) -> bool:
    """Whether the text before `at` ends with a digit (spaces or a hyphen between)."""
    return bool(re.search(r"\d[\s-]*$", text[max(0, at - 12):at]))
