"""From token ids to streamed text: whole UTF-8 characters only, stop strings cut exactly."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

__all__ = ["ByteDetokenizer", "IncrementalDetokenizer", "StopStringFilter"]


class IncrementalDetokenizer:
    """Decodes a growing list of token ids into text pieces that are never half a character.

    Decodes a short window of recent tokens twice (with and without the new ones) and emits
    the difference, so tokenizers that merge spaces or bytes across tokens still concatenate
    to `tokenizer.decode(all_ids)`.

    Special tokens spell nothing, except those named in `keep` (e.g. a chat template's
    tool-call marker, which a chat model reads calls from).
    """

    def __init__(self, tokenizer: Any, keep: Collection[str] = ()):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = 0  # tokens before this are already emitted
        self.skip = _skipped(tokenizer, keep)  # None: every special token

    def _decode(self, ids: Sequence[int]) -> str:
        if self.skip is not None:
            ids = [i for i in ids if i not in self.skip]
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip is None, clean_up_tokenization_spaces=False
        )

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the newly completed text ('' while a character is unfinished)."""
        self.ids.extend(token_ids)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is left at the end (an unfinished character decodes as U+FFFD)."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :]


class ByteDetokenizer:
    """Decodes a growing byte string into text pieces that are never half a character."""

    def __init__(self):
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        """Add bytes; return the newly completed text."""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """An unfinished character at the end decodes as U+FFFD."""
        return self._decoder.decode(b"", final=True)


class StopStringFilter:
    """Holds back text that could still become a stop string; reports when one completes.

    Anything it releases can never be part of a stop string found later, so a stream never
    shows a piece that `invoke` would cut.
    """

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what is safe to emit. Sets `stopped` once a stop string appears.

        The cut is at the stop string that completes first (the longest of those completing
        together), as a character-by-character stream sees it, so where the text is cut does not
        depend on how it was split into pushes (e.g. stops "\n\nHuman:" and "Human").
        """
        if self.stopped:
            return ""
        buffer = self.held + text
        hits = [(i + len(s), i) for s in self.stop if (i := buffer.find(s)) >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return buffer[: min(hits)[1]]
        keep = max((_overlap(buffer, s) for s in self.stop), default=0)
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Release the held text at the end of generation."""
        out, self.held = self.held, ""
        return "" if self.stopped else out


def _skipped(tokenizer: Any, keep: Collection[str]) -> frozenset[int] | None:
    """The special token ids to skip when some (`keep`) must be spelled; None when none of
    `keep` is a special token (the tokenizer skips them all)."""
    if not keep:
        return None
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special = {i for i, token in added.items() if getattr(token, "special", False)}
    special |= set(getattr(tokenizer, "all_special_ids", ()))
    kept = {i for i in special if tokenizer.convert_ids_to_tokens(i) in keep}
    return frozenset(special - kept) if kept else None


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
