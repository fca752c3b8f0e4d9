"""Tokenizer, chat template and the token ids of a thinking block.

A budget-forced answer is laid out in token ids, never re-tokenised text::

    prompt:   chat template(user question, generation prompt) + "<think>\\n"
    thinking: exactly ℓ generated tokens ("</think>" and end-of-sequence suppressed)
    closing:  "\\n</think>\\n\\n" (forced)
    answer:   generated until an end-of-sequence token or the answer cap

With ℓ = 0 the block is ``<think>\\n\\n</think>\\n\\n``, which is what Qwen3's own
template writes when thinking is switched off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import NamedTuple

from .qwen3 import ModelError

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"


class ThinkingFormat(NamedTuple):
    """Token ids that delimit thinking and end a reply.

    **Arguments** (fields): `think_end_id` (the ``</think>`` token);
    `open_ids` (appended to the prompt: ``"<think>\\n"``); `close_ids`
    (forced after the budget: ``"\\n</think>\\n\\n"``); `stop_ids`
    (end-of-sequence tokens that end the answer).
    """

    think_end_id: int
    open_ids: tuple[int, ...]
    close_ids: tuple[int, ...]
    stop_ids: tuple[int, ...]

    @property
    def suppressed_ids(self) -> tuple[int, ...]:
        """Tokens forbidden while thinking: ``</think>`` and every stop token."""
        return tuple(sorted({self.think_end_id, *self.stop_ids}))


def load_tokenizer(path: str):
    """The `transformers` tokenizer of a local checkpoint folder (no download).

    **Arguments:** `path`: folder with tokenizer files (tokenizer.json, tokenizer_config.json …).

    **Returns:** the tokenizer. Raises :class:`ModelError` if the folder has none.
    """
    if not os.path.isdir(path):
        raise ModelError(f"model path {path!r}: no such directory")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"model path {path!r}: cannot load a tokenizer ({' '.join(str(err).split())[:200]})") from None


def _token_id(tokenizer, token: str) -> int | None:
    ids = tokenizer.convert_tokens_to_ids([token])
    tid = ids[0] if ids else None
    return None if tid is None or tid == tokenizer.unk_token_id else int(tid)


def thinking_format(tokenizer, path: str | None = None) -> ThinkingFormat:
    """The :class:`ThinkingFormat` of a tokenizer (and its checkpoint's generation_config.json).

    **Arguments:** `tokenizer`; `path`: the checkpoint folder, whose
    `generation_config.json` may list more end-of-sequence ids.

    **Returns:** the format. Raises :class:`ModelError` when the tokenizer has
    no ``</think>`` token (not a thinking model).
    """
    end = _token_id(tokenizer, "</think>")
    if end is None:
        raise ModelError("tokenizer has no '</think>' token: not a thinking model")
    stops = set()
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = _token_id(tokenizer, token)
        if tid is not None:
            stops.add(tid)
    gen = os.path.join(path, "generation_config.json") if path else None
    if gen and os.path.isfile(gen):
        with open(gen, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        stops.update([eos] if isinstance(eos, int) else (eos or []))
    encode = lambda text: tuple(tokenizer.encode(text, add_special_tokens=False))
    return ThinkingFormat(end, encode(THINK_OPEN), encode(THINK_CLOSE), tuple(sorted(stops)))


def prompt_ids(tokenizer, fmt: ThinkingFormat, question: str) -> list[int]:
    """Token ids of a one-turn chat prompt that opens a thinking block.

    **Arguments:** `tokenizer`; `fmt`; `question`: the user message.

    **Returns:** ids of ``template([user: question], generation prompt) + "<think>\\n"``.
    """
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=True)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if ids[-len(fmt.open_ids):] != list(fmt.open_ids):
        ids += fmt.open_ids
    return ids


def decode(tokenizer, ids: Sequence[int], stop_ids: Sequence[int] = ()) -> str:
    """Text of `ids`, leaving out stop tokens (special tokens such as ``</think>`` kept)."""
    stops = set(stop_ids)
    return tokenizer.decode([int(i) for i in ids if int(i) not in stops], skip_special_tokens=False)
