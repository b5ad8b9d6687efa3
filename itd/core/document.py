"""The corpus record every reader yields and every detector scans: a `Document`, and the `Segment`s that say where
each text of a multi-text record (a prompt and its response, chat turns) lies in it."""

from __future__ import annotations

from dataclasses import dataclass, field

from itd.core.io import redact_text

__all__ = ["Document", "Segment"]


@dataclass(frozen=True, slots=True)
class Segment:
    """One text of a record inside its joined document: [start, end) characters, the field it came from (with
    the chat role for turns: `messages[user]`) and its side ("input", "output" or None)."""

    field: str
    side: str | None
    start: int
    end: int


@dataclass(slots=True)
class Document:
    """One corpus document: its file, 1-based line (JSONL/text) or row (parquet, datasets), and text. A record
    with several texts (a prompt and its response, chat turns) is one document of its texts joined
    (`itd.corpus.layouts.join_texts`); `segments` then says where each text lies and on which side it is.

    A window of a long document (`itd.corpus.scan.batches`, `window`) is a `Document` too: `text` is the window,
    `offset` the character offset of the window in the whole document, to which evidence offsets refer, and its
    `segments` are shifted to the window.
    """

    file: str
    line: int
    text: str
    offset: int = 0
    segments: tuple[Segment, ...] = field(default=(), compare=False)

    def output_starts(self) -> list[int]:
        """Where each output-side text (a response, an assistant turn, an answer) starts in `text`."""
        return [seg.start for seg in self.segments if seg.side == "output"]

    def window(self, start: int, end: int) -> "Document":
        """The characters [start, end) of this document as a document of their own (offset and segments shifted)."""
        segments = tuple(Segment(s.field, s.side, s.start - start, s.end - start)
                         for s in self.segments if s.start < end and s.end > start)
        return Document(self.file, self.line, self.text[start:end], self.offset + start, segments)

    @property
    def id(self) -> str:  # what evidence quotes: no credentials of a corpus URL (e.g. a signed-URL query)
        return f"{redact_text(self.file)}:{self.line}"
