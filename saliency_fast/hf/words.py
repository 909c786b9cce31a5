"""Word index of every token, so subword scores can be merged into words (``aggregate_words``).

Fast tokenizers know which word each token came from; for a text pair (multiple choice) their
word indices restart at 0 in the second text, so we offset them to keep words distinct.
Tokenizers without that information fall back to the subword markers in the token text:
WordPiece's ``##`` continues a word, byte-level BPE's ``Ġ`` and SentencePiece's ``▁`` start one.
Special tokens belong to no word (``None``).
"""

from __future__ import annotations

CONTINUATION_PREFIX = "##"
WORD_START_PREFIXES = ("Ġ", "▁")


def word_ids_from_encoding(encoding, index: int = 0, special: list[bool] | None = None) -> list[int | None] | None:
    """Word ids of example ``index`` of a fast tokenizer's ``BatchEncoding``, or ``None`` if the
    tokenizer cannot say (slow tokenizers). ``special`` marks tokens to map to ``None``."""
    try:
        words = encoding.word_ids(index)
        sequences = encoding.sequence_ids(index)
    except (ValueError, AttributeError):
        return None
    out: list[int | None] = []
    offset, last_sequence, highest = 0, None, -1
    for i, (word, sequence) in enumerate(zip(words, sequences)):
        if word is None or (special is not None and special[i]):
            out.append(None)
            continue
        if sequence != last_sequence:
            offset, last_sequence = highest + 1, sequence
        out.append(word + offset)
        highest = max(highest, word + offset)
    return out


def word_ids_from_tokens(tokens: list[str], special: list[bool]) -> list[int | None]:
    """Word ids guessed from subword markers; a token without any marker after a ``Ġ``/``▁`` word
    continues it (byte-level BPE), otherwise every unmarked token is its own word (word-level)."""
    uses_start_markers = any(t.startswith(WORD_START_PREFIXES) for t, s in zip(tokens, special) if not s)
    out: list[int | None] = []
    word = -1
    for i, (token, is_special) in enumerate(zip(tokens, special)):
        if is_special:
            out.append(None)
            continue
        previous_is_word = i > 0 and out[-1] is not None
        if token.startswith(CONTINUATION_PREFIX) and previous_is_word:
            continues = True
        elif uses_start_markers:
            continues = previous_is_word and not token.startswith(WORD_START_PREFIXES)
        else:
            continues = False
        if not continues:
            word += 1
        out.append(word)
    return out


def word_ids(encoding, index: int, tokens: list[str], special: list[bool]) -> list[int | None]:
    """Word ids of one encoded example: the tokenizer's own when it has them, else guessed."""
    found = word_ids_from_encoding(encoding, index, special)
    return found if found is not None else word_ids_from_tokens(tokens, special)
