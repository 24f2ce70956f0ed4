"""An offline ASCII tokenizer (vocab 128) for the `tiny` preset, and the tokenizer loader.

One id per ASCII character: ids 0-3 are special (pad, bos, eos, unk), every other id is the
character's code point, so any ASCII text (the prompt template included) round-trips
exactly. Non-ASCII characters become ``unk`` (decoded as "?").

>>> tok = AsciiTokenizer()
>>> tok.decode(tok.encode("Yes, at the top left."))
'Yes, at the top left.'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from actors.modeling.errors import MyriadError

TOKENIZER_FILE = "ascii_tokenizer.json"


class TextTokenizer(Protocol):
    """The subset of a Hugging Face tokenizer the model uses (both kinds provide it)."""

    eos_token_id: int
    pad_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids, skip_special_tokens: bool = ...) -> str: ...
    def save_pretrained(self, directory) -> object: ...


class AsciiTokenizer:
    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    unk_token_id = 3
    vocab_size = 128
    _SPECIAL = {0, 1, 2}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [o if 4 <= (o := ord(c)) < 128 else self.unk_token_id for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for i in (int(x) for x in ids):
            if i in self._SPECIAL:
                if not skip_special_tokens:
                    out.append(("<pad>", "<s>", "</s>")[i])
            elif i == self.unk_token_id:
                out.append("?")
            else:
                out.append(chr(i))
        return "".join(out)

    def save_pretrained(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps({"kind": "ascii", "vocab_size": 128}))


def load_tokenizer(directory: Path) -> TextTokenizer:
    """The tokenizer saved in ``directory`` (ASCII or a Hugging Face tokenizer)."""
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return AsciiTokenizer()
    if not any(directory.glob("tokenizer*.json")):
        raise MyriadError(f"no tokenizer in {directory}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
