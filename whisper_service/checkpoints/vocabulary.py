"""Is a checkpoint's vocabulary Whisper's?

openai-whisper decodes with its own tokenizer (the `gpt2` and `multilingual` tiktoken files
it ships), whatever tokenizer files a checkpoint carries. A checkpoint whose token ids mean
other words, or whose special tokens sit elsewhere, would transcribe into the wrong words, so
it is refused with a sentence saying what differs. Tokens are compared as the text Hugging
Face's byte-level BPE files spell them in ('Ġthe' for b' the'), special tokens by name.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Dict, List, Mapping, Optional

from whisper.tokenizer import get_encoding

from whisper_service.errors import ModelUnavailable
from whisper_service.checkpoints.files import read_json

ENGLISH_VOCABULARY = 51864  # tokens of the *.en models (99 language tokens, unused)
MULTILINGUAL_VOCABULARIES = (51865, 51866)  # 99 languages; 100 (large-v3, turbo)
# names older tokenizer files give to Whisper's special tokens
SPECIAL_ALIASES = {"<|nocaptions|>": "<|nospeech|>", "<|iw|>": "<|he|>"}
SHOWN_DIFFERENCES = 3  # differing tokens named in the refusal
# the files a checkpoint folder may spell its vocabulary in, first found wins
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocabulary.json", "vocabulary.txt")


def check_size(n_vocab: int, where: str) -> None:
    """Refuse an embedding whose size is no Whisper vocabulary's."""
    if n_vocab != ENGLISH_VOCABULARY and n_vocab not in MULTILINGUAL_VOCABULARIES:
        raise ModelUnavailable(
            f"{where} has a vocabulary of {n_vocab} tokens; Whisper's has {ENGLISH_VOCABULARY} "
            f"(English-only models) or {' or '.join(map(str, MULTILINGUAL_VOCABULARIES))} "
            "(multilingual), so openai-whisper cannot read its tokens"
        )


def check_tokens(tokens: Mapping[str, int], n_vocab: int, where: str) -> None:
    """Refuse a checkpoint whose tokens (text -> id) have other ids than Whisper's for a
    model with `n_vocab` tokens. Tokens Whisper has and the checkpoint does not name (older
    files leave out the timestamps) are no difference."""
    check_size(n_vocab, where)
    ours = whisper_vocabulary(n_vocab)
    differences: List[str] = []
    for text, theirs in tokens.items():
        text = SPECIAL_ALIASES.get(text, text)
        expected = ours.get(text)
        if expected is None:
            differences.append(f"{text!r} (token {theirs}) is not in Whisper's vocabulary")
        elif expected != theirs:
            differences.append(f"{text!r} is token {theirs} there but {expected} in Whisper's")
    if differences:
        more = len(differences) - SHOWN_DIFFERENCES
        shown = "; ".join(differences[:SHOWN_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")
        raise ModelUnavailable(
            f"{where} has a vocabulary that differs from Whisper's, which openai-whisper "
            f"decodes with: {shown}"
        )


@lru_cache(maxsize=None)
def whisper_vocabulary(n_vocab: int) -> Dict[str, int]:
    """Every token of Whisper's vocabulary for a model with n_vocab tokens: text -> id."""
    multilingual = n_vocab >= MULTILINGUAL_VOCABULARIES[0]
    languages = n_vocab - 51765 - int(multilingual)  # as whisper.model.Whisper.num_languages
    encoding = get_encoding("multilingual" if multilingual else "gpt2", languages)
    specials = {encoding.encode_single_token(text): text for text in encoding.special_tokens_set}
    return {
        specials.get(token) or byte_level(encoding.decode_single_token_bytes(token)): token
        for token in range(encoding.n_vocab)
    }


def read_tokenizer_files(folder: str) -> Optional[Dict[str, int]]:
    """The tokens (text -> id) a checkpoint folder spells out in its tokenizer files: Hugging
    Face's tokenizer.json, or vocab.json with added_tokens.json, or CTranslate2's
    vocabulary.json / vocabulary.txt (one token a line, the line number its id). None when
    the folder has none of them."""
    for name in TOKENIZER_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _READERS[name](path)
    return None


def _tokenizer_json(path: str) -> Dict[str, int]:
    document = read_json(path, repr(os.path.dirname(path)))
    tokens = dict(document.get("model", {}).get("vocab", {}))
    tokens.update({added["content"]: added["id"] for added in document.get("added_tokens", [])})
    return tokens


def _vocab_json(path: str) -> Dict[str, int]:
    tokens = dict(read_json(path, repr(os.path.dirname(path))))
    added = os.path.join(os.path.dirname(path), "added_tokens.json")
    if os.path.isfile(added):
        tokens.update(read_json(added, repr(os.path.dirname(path))))
    return tokens


def _vocabulary_json(path: str) -> Dict[str, int]:
    return {text: index for index, text in enumerate(read_json(path, repr(os.path.dirname(path))))}


def _vocabulary_txt(path: str) -> Dict[str, int]:
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): index for index, line in enumerate(f)}


_READERS = {
    "tokenizer.json": _tokenizer_json,
    "vocab.json": _vocab_json,
    "vocabulary.json": _vocabulary_json,
    "vocabulary.txt": _vocabulary_txt,
}


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (b' ' -> 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + extra)
            extra += 1
    return alphabet


_BYTE_LEVEL = _bytes_to_unicode()


def byte_level(token: bytes) -> str:
    """A token's bytes as byte-level BPE files spell them."""
    return "".join(_BYTE_LEVEL[b] for b in token)
