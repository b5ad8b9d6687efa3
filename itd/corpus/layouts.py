"""Record layouts of training corpora: which fields of a record hold text, and on which side (input or output).

A corpus record is read through a `Layout`: plain `text`; Alpaca (`instruction`, `input`, `output`);
prompt/completion; prompt/response; OpenAI chat `messages` (role/content, content a string or a list of parts);
ShareGPT `conversations` (from/value); benchmark-shaped records (GSM8K question/answer, MMLU
question/choices/answer). `detect_layout` picks the first layout whose keys a record has; `--text-field` names
fields or simple paths (`messages[*].content`) instead.

A record's texts are joined, in record order, with a blank line between them, into one document; `Segment`s say
where each text lies in it and on which side it is, so evidence offsets point into the document and a detector can
tell a question in a prompt from its answer in the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from itd.core.document import Segment
from itd.core.errors import InputError

__all__ = [
    "Segment", "FieldSpec", "Layout", "LAYOUTS", "AUTO", "SEPARATOR", "detect_layout", "fields_layout",
    "get_layout", "join_texts",
]

AUTO = "auto"
SEPARATOR = "\n\n"  # between the texts of one record
INPUT, OUTPUT = "input", "output"

# role names (chat roles and field names) of each side; a role in neither is kept with no side
_INPUT_ROLES = frozenset({
    "system", "user", "human", "prompter", "instruction", "input", "prompt", "question", "query", "context",
    "choices", "tool", "function", "observation",
})
_OUTPUT_ROLES = frozenset({
    "assistant", "gpt", "model", "bot", "chatgpt", "bing", "output", "completion", "response", "answer",
    "solution", "target", "chosen",
})
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def side_of(role: str | None) -> str | None:
    """"input", "output" or None for a chat role or field name."""
    if role is None:
        return None
    role = role.strip().lower()
    return INPUT if role in _INPUT_ROLES else OUTPUT if role in _OUTPUT_ROLES else None


_STEP = re.compile(r"([^.\[\]]+)|\[(\*|\d+)\]|(\.)")


def _parse_path(path: str) -> tuple[Any, ...]:
    """`messages[*].content` -> ("messages", "*", "content"); ints for indexes."""
    steps: list[Any] = []
    pos = 0
    path = path.strip()
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise InputError(f"cannot read the field path {path!r} at character {pos + 1}: use names, "
                             "'.', '[*]' and '[N]', e.g. messages[*].content")
        if m.group(1) is not None:
            steps.append(m.group(1))
        elif m.group(2) is not None:
            steps.append("*" if m.group(2) == "*" else int(m.group(2)))
        pos = m.end()
    if not steps or not isinstance(steps[0], str):
        raise InputError(f"a field path starts with a field name, got {path!r}")
    return tuple(steps)


def _part_text(value: Any) -> str | None:
    """The text of a field value: a string, or the text parts of a list of content parts
    (`[{"type": "text", "text": ...}, ...]`, or strings); None when it holds no text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("content"), str):
                texts.append(part["content"])
        return "\n".join(texts) if texts else None
    return None


_ROLE_KEYS = ("role", "from", "speaker", "author")


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` without the character spans `spans` (overlapping spans are merged)."""
    out, at = [], 0
    for a, b in sorted(spans):
        if b <= at:
            continue
        out.append(text[at:max(a, at)])
        at = b
    out.append(text[at:])
    return "".join(out)


def _cut_value(value: Any, spans: list[tuple[int, int]]) -> Any:
    """A field value with `spans` of its text cut: a string, or a list of strings / content parts (their texts
    joined by a newline, as `_part_text` reads them)."""
    if isinstance(value, str):
        return cut_spans(value, spans)
    out, pos = [], 0
    for item in value:
        text = item if isinstance(item, str) else next((item[k] for k in ("text", "content") if isinstance(item, dict) and isinstance(item.get(k), str)), None)
        if text is None:
            out.append(item)
            continue
        local = [(max(a - pos, 0), min(b - pos, len(text))) for a, b in spans if a < pos + len(text) and b > pos]
        new = cut_spans(text, local) if local else text
        if isinstance(item, str):
            out.append(new)
        else:
            k = "text" if isinstance(item.get("text"), str) else "content"
            out.append({**item, k: new})
        pos += len(text) + 1
    return out


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field (or path) that holds text. `kind`: "text" (a string or content parts), "lines" (a list of strings,
    one per line: MCQ choices) or "key" (an MCQ answer: a 0-based index becomes its letter)."""

    path: str
    side: str | None = None  # None: from the role of the turn (chat), or from the field's name
    kind: str = "text"
    steps: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _parse_path(self.path))

    @property
    def top(self) -> str:
        """The record's top-level field the path starts at."""
        return self.steps[0]

    def texts(self, rec: dict) -> Iterator[tuple[str, str | None, str]]:
        """(field label, side, text) of every text this spec finds in `rec`, in order."""
        for label, side, text, _, _ in self.leaves(rec):
            yield label, side, text

    def leaves(self, rec: dict) -> Iterator[tuple[str, str | None, str, Any, Any]]:
        """(field label, side, text, container, key) of every text this spec finds in `rec`, in order:
        `container[key]` is the value the text was read from (for rewriting it)."""
        for value, parent, label, container, key in self._walk(rec, self.steps, None, "", None, None):
            text = self._text(value)
            if text is None:
                continue
            role = None
            if parent is not rec and isinstance(parent, dict):  # a chat turn: its role says the side
                role = next((parent[k] for k in _ROLE_KEYS if isinstance(parent.get(k), str)), None)
            if role is not None:
                label = f"{self.top}[{role.strip().lower()}]"
            side = self.side or side_of(role) or side_of(self.steps[-1] if isinstance(self.steps[-1], str) else None)
            yield label, side, text, container, key

    def _text(self, value: Any) -> str | None:
        if self.kind == "lines":
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return "\n".join(value)
            return _part_text(value)
        if self.kind == "key":
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_LETTERS):
                return _LETTERS[value]
            return value if isinstance(value, str) else None
        return _part_text(value)

    def _walk(self, value: Any, steps: tuple, parent: Any, label: str, container: Any, key: Any) -> Iterator[tuple[Any, Any, str, Any, Any]]:
        if not steps:
            yield value, parent, label, container, key
            return
        step, rest = steps[0], steps[1:]
        if step == "*":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from self._walk(item, rest, item, f"{label}[*]", value, i)
        elif isinstance(step, str):
            if isinstance(value, dict) and step in value:
                yield from self._walk(value[step], rest, value, f"{label}.{step}" if label else step, value, step)
        elif isinstance(value, list) and -len(value) <= step < len(value):
            yield from self._walk(value[step], rest, value[step], f"{label}[{step}]", value, step)


@dataclass(frozen=True, slots=True)
class Layout:
    """A record layout: the fields read, in order, and the keys a record must have to be detected as one."""

    name: str
    fields: tuple[FieldSpec, ...]
    keys: tuple[str, ...]  # detection: every key present (and not null)
    description: str = ""

    def fits(self, rec: dict) -> bool:
        """Whether `rec` looks like a record of this layout (has every detection key)."""
        return all(rec.get(k) is not None for k in self.keys)

    def texts(self, rec: dict) -> list[tuple[str, str | None, str]]:
        """(field label, side, text) of every text of `rec`, in layout order; empty when it has none."""
        return [t for spec in self.fields for t in spec.texts(rec)]

    @property
    def single_field(self) -> str | None:
        """The field name when the layout reads one plain field (`text`, `--text-field body`), else None."""
        if len(self.fields) == 1 and self.fields[0].path == self.fields[0].top:
            return self.fields[0].path
        return None

    def cut(self, rec: dict, spans: list[tuple[int, int]]) -> bool:
        """Remove the character spans `spans` (offsets in the record's joined document) from `rec`'s texts, in
        place. False, with `rec` unchanged, when a span falls in a value that cannot be cut (an MCQ key)."""
        leaves = [leaf for spec in self.fields for leaf in ((spec, *x) for x in spec.leaves(rec))]
        edits: list[tuple[Any, Any, Any]] = []
        pos, first = 0, True
        for spec, _, _, text, container, key in leaves:
            if not text and len(leaves) > 1:
                continue
            if not first:
                pos += len(SEPARATOR)
            first = False
            local = [(max(a - pos, 0), min(b - pos, len(text))) for a, b in spans if a < pos + len(text) and b > pos]
            pos += len(text)
            if not local:
                continue
            if spec.kind == "key":
                return False
            edits.append((container, key, _cut_value(container[key], local)))
        for container, key, value in edits:
            container[key] = value
        return True

    @property
    def field_names(self) -> str:
        return ", ".join(spec.path for spec in self.fields)


def _chat(name: str, top: str, content: str, description: str) -> Layout:
    return Layout(name, (FieldSpec(f"{top}[*].{content}"),), (top,), description)


# detection order: the first layout whose keys a record has is the file's layout
LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (
        Layout("text", (FieldSpec("text"),), ("text",), "plain text in a 'text' field"),
        _chat("messages", "messages", "content", "OpenAI chat: messages[*].role/content"),
        _chat("sharegpt", "conversations", "value", "ShareGPT: conversations[*].from/value"),
        Layout("alpaca", (FieldSpec("instruction", INPUT), FieldSpec("input", INPUT), FieldSpec("output", OUTPUT)),
               ("instruction", "output"), "Alpaca: instruction, input, output"),
        Layout("prompt-completion", (FieldSpec("prompt", INPUT), FieldSpec("completion", OUTPUT)),
               ("prompt", "completion"), "prompt, completion"),
        Layout("prompt-response", (FieldSpec("prompt", INPUT), FieldSpec("response", OUTPUT)),
               ("prompt", "response"), "prompt, response"),
        Layout("mmlu", (FieldSpec("question", INPUT), FieldSpec("choices", INPUT, "lines"), FieldSpec("answer", OUTPUT, "key")),
               ("question", "choices", "answer"), "MMLU-shaped: question, choices, answer (index or letter)"),
        Layout("gsm8k", (FieldSpec("question", INPUT), FieldSpec("answer", OUTPUT)), ("question", "answer"),
               "GSM8K-shaped: question, answer"),
    )
}


def fields_layout(text_field: str) -> Layout:
    """The layout `--text-field` names: one or more comma-separated fields or paths (`messages[*].content`)."""
    paths = [p.strip() for p in text_field.split(",") if p.strip()]
    if not paths:
        raise InputError("--text-field names no field")
    specs = tuple(FieldSpec(p) for p in paths)
    return Layout("fields", specs, (), f"--text-field {text_field}")


def get_layout(name: str) -> Layout:
    """The registered layout called `name` (a usage error naming the known ones otherwise)."""
    key = name.strip().lower().replace("_", "-")
    if key not in LAYOUTS:
        raise InputError(f"unknown corpus layout {name!r}; known: {AUTO}, " + ", ".join(LAYOUTS))
    return LAYOUTS[key]


def detect_layout(rec: dict) -> Layout | None:
    """The first registered layout that `rec` fits, or None."""
    return next((layout for layout in LAYOUTS.values() if layout.fits(rec)), None)


def join_texts(texts: list[tuple[str, str | None, str]]) -> tuple[str, tuple[Segment, ...]]:
    """One document of a record's texts, in order, a blank line apart, and where each text lies in it."""
    parts: list[str] = []
    segments: list[Segment] = []
    pos = 0
    for label, side, text in texts:
        if not text:
            continue
        if parts:
            parts.append(SEPARATOR)
            pos += len(SEPARATOR)
        parts.append(text)
        segments.append(Segment(label, side, pos, pos + len(text)))
        pos += len(text)
    return "".join(parts), tuple(segments)
