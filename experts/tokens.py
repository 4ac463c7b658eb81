"""Token strings as OpenAI-style endpoints return them, mapped to a local tokenizer's ids and back.

An endpoint names each token of its log-probs by the text it adds (" the"), or, where that text is not whole
UTF-8 (a byte of a multi-byte character), as ``bytes:\\xe2\\x80`` (OpenAI's legacy completions), or as
``token_id:N`` (vLLM's ``return_tokens_as_token_ids``). Every token of a byte-level BPE or SentencePiece
vocabulary has bytes of its own, so an endpoint with the same tokenizer maps back exactly.
"""

from __future__ import annotations

import functools
import re

from transformers import PreTrainedTokenizerBase

from experts.errors import UserInputError

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (byte-level BPE spells a space 'Ġ'), character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class TokenTable:
    """Each id's bytes under one tokenizer, and the way back from an endpoint's token string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_ids)
        alphabet = _byte_level_alphabet()
        ordinary = [p for i, p in enumerate(pieces) if i not in special and p]
        byte_level = all(c in alphabet for p in ordinary for c in p)
        self.bytes: list[bytes] = []
        for i, piece in enumerate(pieces):
            if i in special or piece is None:
                self.bytes.append((piece or "").encode())
            elif byte_level:
                self.bytes.append(bytes(alphabet[c] for c in piece))
            elif _BYTE_PIECE.fullmatch(piece):
                self.bytes.append(bytes([int(piece[3:5], 16)]))
            else:
                self.bytes.append(piece.replace("\u2581", " ").encode())
        self.ids: dict[bytes, int] = {}
        for i, data in enumerate(self.bytes):
            self.ids.setdefault(data, i)  # a duplicate (a special token spelt like an ordinary one) keeps the first

    def string(self, token_id: int) -> str:
        """The endpoint's name for a token: its text, or ``bytes:\\x..`` where that is not whole UTF-8."""
        data = self.bytes[token_id]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def id_of(self, token: str) -> int:
        """The id of an endpoint's token string: exact where the vocabulary holds its bytes; otherwise (another
        tokenizer) the first token of its text under ours, the approximation the README documents."""
        if token.startswith("token_id:") and token[9:].isdigit() and int(token[9:]) < len(self.bytes):
            return int(token[9:])
        data = _bytes_of(token)
        if data in self.ids:
            return self.ids[data]
        ids = self.tokenizer.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False)
        if not ids:
            raise UserInputError(
                f"the endpoint returned the token {token!r}, which is no token of tokenizer "
                f"{self.tokenizer.name_or_path!r}; give the endpoint's own tokenizer as the model's tokenizer"
            )
        return ids[0]


def _bytes_of(token: str) -> bytes:
    if token.startswith("bytes:") and re.fullmatch(r"(\\x[0-9a-fA-F]{2})+", token[6:]):
        return bytes(int(token[i + 2 : i + 4], 16) for i in range(6, len(token), 4))
    return token.encode("utf-8")
