"""Text normalisation, tokenisation and n-gram hashing, vectorised with numpy.

Normalisation folds unicode (NFKC), case, punctuation, whitespace and markup (HTML tags and character references,
LaTeX spacing commands); a token is a maximal run of letters or of digits (digits joined by `,` or `.` stay one
token, so `1,000` and `3.5` are single numbers, and `5x` is two tokens). GSM8K calculator
annotations `<<expr=result>>` are blanked. Positions are kept: for ASCII text a token's byte offsets in the
normalised buffer are its character offsets in the original, which is what evidence needs.

Token hashes are deterministic 64-bit values (no per-process salt), so persistent indexes built on one machine
are valid on another.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from hashlib import blake2b
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "HashFilter",
    "TokenizedBatch",
    "normalize",
    "tokenize",
    "ngram_hashes",
    "ngram_hashes_at",
    "expand_ranges",
    "mix64",
    "NUMBER_HASH",
    "fold_for_alignment",
    "byte_to_char",
    "window_spans",
    "strip_markup",
]

_U64 = np.uint64
_NONWORD = re.compile(r"[\W_]")
_ANNOTATION = re.compile(r"<<[^<>\n]*>>")
_ESCAPED_ANNOTATION = re.compile(r"&lt;&lt;[^<>&\n]*&gt;&gt;")
_NON_SPACE = re.compile(r"\S+")
# markup around copied text: HTML tags (known names; attributes only as name=value, so "a<b and c>d" is not a
# tag), character references, and LaTeX spacing / sizing commands that do not change what the text says
_HTML_TAG = re.compile(
    r"</?(?:a|abbr|article|b|big|blockquote|body|br|center|code|dd|del|div|dl|dt|em|font|h[1-6]|head|hr|html|i|"
    r"img|ins|kbd|label|li|mark|ol|p|pre|q|s|section|small|span|strike|strong|sub|sup|table|tbody|td|th|thead|"
    r"title|tr|tt|u|ul|var)(?:\s+[\w:-]+\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'|[^\s\"'<>]+))*\s*/?>",
    re.IGNORECASE,
)
_TAG_START = re.compile(r"</?[a-zA-Z]")
_HTML_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});")
_LATEX_SPACING = re.compile(
    r"\\(?:q?quad|[hv]space\*?|left|right|[bB]ig{1,2}[lr]?|displaystyle|textstyle|mathrm|mathbf|mathit|"
    r"text(?:rm|bf|it)?|mbox|operatorname)(?![a-zA-Z])"
)

# Byte classes of the normalised (lowercase) buffer (`tokenize` computes the word bytes by comparisons: digits,
# a-z, and bytes >= 0x80, which belong to non-ASCII letters/digits until `_blank_unicode_punctuation`).
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[ord("0") : ord("9") + 1] = True
_JOINER = np.zeros(256, dtype=bool)
_JOINER[[ord(","), ord(".")]] = True
_OPTION_LETTER = np.zeros(256, dtype=bool)
_OPTION_LETTER[ord("a") : ord("j") + 1] = True
_MARKER_END = np.zeros(256, dtype=bool)
_MARKER_END[[ord("."), ord(")")]] = True

# Masks keeping the first k bytes of a little-endian uint64.
_MASKS = np.array([(1 << (8 * k)) - 1 if k < 8 else (1 << 64) - 1 for k in range(9)], dtype=_U64)
_CHUNKS = 4  # tokens up to 32 bytes are hashed vectorised; longer ones (rare) with blake2b

NUMBER_HASH = np.uint64(0x9E3779B97F4A7C15)  # placeholder that every number token becomes in the number pass
_NGRAM_MULT = np.uint64(0x100000001B3)
_LEN_MULT = np.uint64(0xD6E8FEB86659FD93)


class HashFilter:
    """A direct-mapped table that rejects most hashes not among `keys` (unsigned integers, 64 or 32 bits) with one
    lookup each: slot = the hash's top bits, one byte per slot, `slots_per_key` slots per key (32: about 3% of them
    set), at most 16 MiB, so that a benchmark's table stays in the CPU cache. `maybe(h)` is true for every key and
    for a few others."""

    def __init__(self, keys: np.ndarray, slots_per_key: int = 32):
        bits = int(np.clip(np.ceil(np.log2(max(1, keys.size) * slots_per_key)), 16, 24))
        width = 8 * keys.dtype.itemsize
        if keys.dtype.kind != "u" or width < bits:
            raise ValueError(f"keys must be unsigned integers of at least {bits} bits, got {keys.dtype}")
        self.shift = keys.dtype.type(width - bits)
        self.table = np.zeros(1 << bits, dtype=bool)
        self.table[keys >> self.shift] = True

    def maybe(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash (any shape, the keys' dtype): whether it may be a key."""
        return self.table[hashes >> self.shift]


def mix64(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a uint64 array: a new array, or `x` itself changed with `inplace`."""
    x = x if inplace and x.dtype == _U64 else x.astype(_U64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return x


def normalize(text: str) -> str:
    """Normalise one text for matching. ASCII input keeps its length (offsets stay valid).

    Markup that a copy may carry around the same words is blanked to spaces of the same length: HTML tags,
    character references (a decoded letter or digit is kept in its word), and LaTeX spacing and sizing commands (`\\quad`, `\\left`,
    `\\text`, ...), so a copy pasted from a web page or with its LaTeX re-spaced keeps its n-grams.
    """
    text = strip_markup(text)
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", text).lower()


def _entity(m: re.Match) -> str:
    decoded = html.unescape(m.group())
    if len(decoded) != 1 or decoded == m.group():
        return m.group()
    # a letter stays inside its word (offsets after it shift by a few characters); anything else becomes spaces
    return decoded if decoded.isalnum() else " " * len(m.group())


def strip_markup(text: str) -> str:
    """Blank HTML tags, character references (and GSM8K annotations written with them) and LaTeX spacing
    commands, keeping the text's length."""
    if "<" in text and _TAG_START.search(text):  # GSM8K's "<<48/2=24>>" annotations are not tags
        text = _HTML_TAG.sub(lambda m: " " * len(m.group()), text)
    if "&" in text:
        if "&lt;&lt;" in text:  # a GSM8K calculator annotation escaped in HTML is blanked as the plain one is
            text = _ESCAPED_ANNOTATION.sub(lambda m: " " * len(m.group()), text)
        text = _HTML_ENTITY.sub(_entity, text)
    if "\\" in text:
        text = _LATEX_SPACING.sub(lambda m: " " * len(m.group()), text)
    return text


def _blank_unicode_punctuation(body: np.ndarray, word: np.ndarray) -> None:
    """Mark the UTF-8 bytes of non-ASCII punctuation and symbols as non-word bytes, in place.

    Covers U+00A0-U+00BF (no-break space, quotes, signs), U+00D7 and U+00F7 (multiplication and division
    signs), U+2000-U+2BFF (general punctuation such as ’ “ — …, currency, arrows, math operators, shapes) and
    U+3000-U+303F (CJK punctuation). Other non-ASCII bytes stay word bytes, as letters do.
    """
    lead = np.flatnonzero(body >= 0xC2)  # lead bytes of multi-byte characters
    first, second = body[lead], body[np.minimum(lead + 1, body.size - 1)]
    two = ((first == 0xC2) & (second >= 0xA0)) | ((first == 0xC3) & ((second == 0x97) | (second == 0xB7)))
    three = ((first == 0xE2) & (second >= 0x80) & (second <= 0xAF)) | ((first == 0xE3) & (second == 0x80))
    for k in range(3):
        word[np.minimum(lead[two | three] + k if k < 2 else lead[three] + k, body.size - 1)] = False


def _blank_annotations(body: np.ndarray, word: np.ndarray) -> None:
    """Mark GSM8K calculator annotations `<<expr=result>>` (on one line) as non-word bytes, in place."""
    lt = np.flatnonzero(body == ord("<"))
    opens = lt[:-1][np.diff(lt) == 1]
    gt = np.flatnonzero(body == ord(">"))
    closes = gt[:-1][np.diff(gt) == 1] + 2  # one past the annotation
    if not opens.size or not closes.size:
        return
    nxt = np.searchsorted(closes, opens + 2)
    ok = nxt < closes.size
    opens, ends = opens[ok], closes[nxt[ok]]
    # an annotation never spans a line
    newlines = np.flatnonzero(body == ord("\n"))
    same_line = np.searchsorted(newlines, opens) == np.searchsorted(newlines, ends)
    opens, ends = opens[same_line], ends[same_line]
    # like the regex <<[^<>]*>>: an open followed by another open before its close is not an annotation
    inner = np.append(opens[1:] >= ends[:-1], True)[: opens.size]
    opens, ends = opens[inner], ends[inner]
    word[expand_ranges(opens, ends - opens)] = False


def expand_ranges(starts: np.ndarray | int, counts: np.ndarray) -> np.ndarray:
    """starts[i], starts[i] + 1, ..., starts[i] + counts[i] - 1 for every i, concatenated (`starts` 0: the index
    of each element within its range)."""
    return np.arange(int(counts.sum())) + np.repeat(starts - (np.cumsum(counts) - counts), counts)


def fold_for_alignment(text: str) -> tuple[str, list[int]]:
    """Fold for the rapidfuzz verifier: lowercase, non-alphanumerics to spaces, whitespace runs collapsed.

    Returns the folded text and, for each of its characters, the index of the character it came from.
    """
    if "<<" in text:
        text = _ANNOTATION.sub(lambda m: " " * len(m.group()), text)
    folded = _NONWORD.sub(" ", text.lower())
    if len(folded) != len(text):  # a rare lowercase mapping changed the length: offsets stay approximate
        folded = folded[: len(text)].ljust(len(text))
    out: list[str] = []
    index: list[int] = []
    for m in _NON_SPACE.finditer(folded):
        if out:
            out.append(" ")
            index.append(m.start() - 1)
        out.append(m.group())
        index.extend(range(m.start(), m.end()))
    return "".join(out), index


@dataclass(slots=True)
class TokenizedBatch:
    """Tokens of a batch of texts, concatenated.

    `hashes[i]` is token i's 64-bit hash, `is_number[i]` whether it starts with a digit, `starts/ends` its byte
    offsets inside its own text's normalised UTF-8 encoding, `doc[i]` the index of its text, and
    `doc_token_offsets[d]` the index of text d's first token (length n_docs + 1).
    """

    hashes: np.ndarray
    is_number: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    doc: np.ndarray
    doc_token_offsets: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.hashes.shape[0])

    def number_hashes(self) -> np.ndarray:
        """Token hashes with every number replaced by one placeholder (the number-normalised pass)."""
        return np.where(self.is_number, NUMBER_HASH, self.hashes)

    def holds_number(self, starts: np.ndarray, n: int) -> np.ndarray:
        """Per n-gram starting at token index `starts[i]`: whether a number is among its n tokens (else its
        number-pass hash is its raw one)."""
        before = np.concatenate([[0], np.cumsum(self.is_number, dtype=np.int64)])
        return before[starts + n] > before[starts]


def tokenize(texts: Sequence[str], *, normalized: bool = False) -> TokenizedBatch:
    """Tokenise and hash a batch of texts in one vectorised pass."""
    encoded = [(t if normalized else normalize(t)).encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    doc_byte_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=doc_byte_offsets[1:])
    # One separator byte between texts keeps tokens from spanning two texts; 8 zero bytes of padding let the
    # unaligned 8-byte reads below run past the last token.
    data = b"\n".join(encoded) + b"\n"
    buf = np.frombuffer(data + b"\0" * 8, dtype=np.uint8)
    body = buf[:-8]
    # byte classes by comparisons (vectorised; faster than a table lookup per byte): digits, then word bytes
    # (digits, a-z, and every byte of a non-ASCII character), then ',' '.' ')' (44 | 2 == 46 | 2 == 46)
    numeric = (body - np.uint8(ord("0"))) < 10
    word = (body - np.uint8(ord("a"))) < 26
    word |= numeric
    word |= body >= 0x80
    if not data.isascii():
        _blank_unicode_punctuation(body, word)
    inner = body[1:-1]
    punct = np.flatnonzero(((inner | np.uint8(2)) == np.uint8(ord("."))) | (inner == np.uint8(ord(")")))) + 1
    if punct.size:
        before, after = body[punct - 1], body[punct + 1]
        # a ',' or '.' between two digits joins them into one number token
        join = _JOINER[body[punct]] & _DIGIT[before] & _DIGIT[after]
        # an option marker ("B." or "(b)" before a choice) is layout, not content: dropping it lets a
        # multiple-choice item match whether or not a copy letters its choices
        single = np.ones(punct.size, dtype=bool)
        single[punct >= 2] = ~word[punct[punct >= 2] - 2]
        marker = _MARKER_END[body[punct]] & _OPTION_LETTER[before] & single
        word[punct[join]] = True
        word[punct[marker] - 1] = False
    if b"<<" in data:
        _blank_annotations(body, word)
    change = np.flatnonzero(word[1:] != word[:-1]) + 1
    bounds = np.concatenate([[0], change]) if word[0] else change
    starts, ends = bounds[0::2], bounds[1::2]  # runs of word bytes alternate start, end; the text ends in "\n"
    # a number and a letter written together ("5x", "2\,x" in LaTeX, "10am") are two tokens, so spacing a copy
    # differently does not change its tokens
    if punct.size:
        numeric[punct[join]] = True
    split = np.flatnonzero(numeric[1:] != numeric[:-1]) + 1  # few: then the cheap tests on those only
    split = split[word[split] & word[split - 1] & (body[split] < 0x80) & (body[split - 1] < 0x80)]
    if split.size:  # each split lies inside a run: it ends one token and starts the next
        starts = np.insert(starts, np.searchsorted(starts, split), split)
        ends = np.insert(ends, np.searchsorted(ends, split), split)
    lens = ends - starts

    # Read each token as up to four unaligned little-endian uint64 words and fold them into one hash.
    words64 = np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=buf.data, strides=(1,))
    with np.errstate(over="ignore"):
        # every token reaches its first chunk: no selection for it
        h = mix64((lens.astype(_U64) * _LEN_MULT) ^ (words64[starts] & _MASKS[np.minimum(lens, 8)]), inplace=True)
        sel = np.flatnonzero(lens > 8)
        for k in range(1, _CHUNKS):
            # a token's hash depends on its own bytes only: chunk k is mixed in only for tokens that reach it
            if not sel.size:
                break
            chunk = words64[starts[sel] + 8 * k] & _MASKS[np.minimum(lens[sel] - 8 * k, 8)]
            h[sel] = mix64(h[sel] ^ chunk, inplace=True)
            sel = sel[lens[sel] > 8 * (k + 1)]
    long_tokens = np.flatnonzero(lens > 8 * _CHUNKS)
    for i in long_tokens:  # rare: URLs, base64, very long words
        digest = blake2b(buf[starts[i] : ends[i]].tobytes(), digest_size=8).digest()
        h[i] = np.frombuffer(digest, dtype="<u8")[0]

    doc_token_offsets = np.searchsorted(starts, doc_byte_offsets, side="left")
    doc = np.repeat(np.arange(len(encoded), dtype=np.int32), np.diff(doc_token_offsets))
    local_starts = starts - doc_byte_offsets[doc]
    return TokenizedBatch(
        hashes=h,
        is_number=_DIGIT[body[starts]] if starts.size else np.zeros(0, dtype=bool),
        starts=local_starts,
        ends=local_starts + lens,
        doc=doc,
        doc_token_offsets=doc_token_offsets.astype(np.int64),
    )


def ngram_hashes(token_hashes: np.ndarray, doc: np.ndarray, ns: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Hashes of every token n-gram for each n in `ns` that lies inside one document.

    Returns `{n: (hashes, positions)}`: `positions[j]` is the index of the n-gram's first token.
    """
    ns = sorted(set(int(n) for n in ns))
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    total = token_hashes.shape[0]
    if not ns:
        return out
    if ns[0] < 1:
        raise ValueError("n must be >= 1")
    # acc_n[i] = sum_j t[i + j] * M^(n - 1 - j) (mod 2^64), the polynomial of the n tokens from i; it splits as
    # acc_(a + b)[i] = acc_a[i] * M^b + acc_b[i + a], so acc_13 takes acc_1, 2, 4, 8, 12, 13: 5 passes, not 12
    polynomials: dict[int, np.ndarray] = {1: token_hashes.astype(_U64, copy=False)}
    with np.errstate(over="ignore"):
        for n in ns:
            m = total - n + 1
            if m <= 0:
                out[n] = (np.zeros(0, _U64), np.zeros(0, np.int64))
                continue
            valid = np.flatnonzero(doc[:m] == doc[n - 1 : n - 1 + m])
            out[n] = (mix64(_polynomial(polynomials, n, total)[valid] ^ _U64(n), inplace=True), valid)
    return out


def ngram_hashes_at(token_hashes: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """The hashes `ngram_hashes` gives the n-grams that start at token indices `starts` (each n-gram inside one
    document), computed at those positions only: cheaper than every n-gram when they are few."""
    acc = np.zeros(starts.size, dtype=_U64)
    with np.errstate(over="ignore"):
        for j in range(n):  # Horner's rule for the polynomial of `ngram_hashes`
            acc *= _NGRAM_MULT
            acc += token_hashes[starts + j]
        acc ^= _U64(n)
    return mix64(acc, inplace=True)


def _polynomial(known: dict[int, np.ndarray], n: int, total: int) -> np.ndarray:
    """acc_n of `ngram_hashes` for a text of `total` tokens, from (and added to) the `known` ones."""
    if n not in known:
        a = 1 << (n.bit_length() - 1)  # the largest power of two in n (n itself when it is one)
        a = a // 2 if a == n else a
        m = total - n + 1
        known[n] = (_polynomial(known, a, total)[:m] * _U64(pow(int(_NGRAM_MULT), n - a, 1 << 64))
                    + _polynomial(known, n - a, total)[a : a + m])
    return known[n]


def byte_to_char(text: str, offsets: np.ndarray) -> np.ndarray:
    """Map byte offsets in `text.encode()` to character offsets in `text`."""
    if text.isascii():
        return offsets
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    char_of_byte = np.concatenate([[0], np.cumsum((raw & 0xC0) != 0x80)])
    return char_of_byte[np.clip(offsets, 0, raw.size)]


_MAX_WINDOW_GROWTH = 4  # a window grows to at most this many times its size to hold enough tokens


def window_spans(text: str, size: int, overlap_tokens: int) -> Iterator[tuple[int, int]]:
    """Character spans [a, b) of overlapping windows that cover `text`, to read a long text in bounded pieces.

    A window is about `size` characters and ends after a line break, or else a space, in its second half. The
    next window starts at the `overlap_tokens`-th last token of the one before, so every run of `overlap_tokens`
    consecutive tokens lies whole in one window, and a window's tokens are the text's own tokens there (cuts fall
    between tokens; normalisation and tokenisation only look a few characters around a token). A window holding
    too few tokens for that (long tokens, or little but punctuation) grows, up to `_MAX_WINDOW_GROWTH` times
    `size`, until it moves on by at least half its length; where even that is not enough, consecutive windows
    overlap by half their length instead, so the work stays at most twice the text. Approximations, in
    pathological text only: that last case; a window that cannot find a space is cut mid-token; and where Unicode
    normalisation changes the text's length, the overlap is widened by that change (offsets are taken on the
    normalised text).
    """
    if size < 1:
        raise ValueError("window size must be >= 1")
    n = len(text)
    a = 0
    while n - a > size:
        want = size
        while True:
            b = _window_end(text, a, min(n, a + want))
            nxt = _tail_start(text, a, b, overlap_tokens) if b < n else b
            if b >= n or nxt - a >= (b - a) // 2 or want >= _MAX_WINDOW_GROWTH * size:
                break
            want *= 2
        yield a, b
        if b >= n:
            return
        if nxt - a < (b - a) // 2:  # too few tokens even grown: half the window overlaps (between tokens)
            nxt = _window_end(text, a, a + (b - a) // 2)
        a = nxt
    yield a, n


def _window_end(text: str, a: int, end: int) -> int:
    """Where a window starting at `a` ends, at most `end`: after the last line break, else space, of its second half."""
    if end >= len(text):
        return len(text)
    mid = a + (end - a) // 2
    for sep in ("\n", " "):
        i = text.rfind(sep, mid, end)
        if i >= 0:
            return i + 1
    return end


def _tail_start(text: str, a: int, b: int, k: int) -> int:
    """Character offset of the start of the k-th last token of `text[a:b]` (`a` if it holds fewer than k)."""
    if k <= 0:
        return b
    span = 16 * k + 256
    while True:
        t = max(a, b - span)
        partial = False
        if t > a:  # start the tail at a line start, or after a space, so it does not begin inside a token
            i = text.rfind("\n", max(a, t - span), t)
            if i < 0:
                i = text.rfind(" ", max(a, t - span), t)
            t, partial = (i + 1, False) if i >= 0 else (t, True)
        tail = text[t:b]
        norm = normalize(tail)
        tb = tokenize([norm], normalized=True)
        first = tb.n_tokens - k  # index of the k-th last token; the first token of a mid-token tail is partial
        if first >= int(partial):
            off = int(byte_to_char(norm, tb.starts[first : first + 1])[0])
            if len(norm) != len(tail):
                off -= abs(len(norm) - len(tail))
            return max(a, t + off)
        if t == a:
            return a
        span *= 4
