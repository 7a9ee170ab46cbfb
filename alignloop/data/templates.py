"""Turn prompts and answers into token ids: the chat template for conversations, plain text otherwise.

The prompt and the answer are tokenised separately and concatenated, so the boundary between them (and so the
loss mask) is exact: the answer's tokens are exactly ``encode_answer(answer)``, whatever the template does.
"""

from __future__ import annotations

from typing import Any

from alignloop.data.records import Prompt


def render_prompt(tokenizer: Any, prompt: Prompt, chat_template: bool = True) -> str:
    """The prompt as the model sees it, ending where the answer starts."""
    if prompt.raw or not chat_template or not getattr(tokenizer, "chat_template", None):
        return prompt.text
    return tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, prompt: Prompt, chat_template: bool = True) -> list[int]:
    text = render_prompt(tokenizer, prompt, chat_template)
    templated = chat_template and not prompt.raw and getattr(tokenizer, "chat_template", None)
    # a rendered chat template already holds its special tokens; raw text gets the tokenizer's (e.g. BOS)
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def encode_answer(tokenizer: Any, answer: str, add_eos: bool = True) -> list[int]:
    """Answer tokens followed by the end-of-turn token (the model must learn to stop)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end an answer: EOS (the chat template's end-of-turn) and the document end, when distinct."""
    ids = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        if tok is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids and tid != tokenizer.pad_token_id:
            ids.append(tid)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids
