"""The synthetic model: tokenizer rule, determinism, lengths (varying or fixed, up to long
replies) and finish reasons."""

from __future__ import annotations

import pytest

from emulator.synthetic import (
    DEFAULT_NATURAL_MAX,
    MAX_REPLY_TOKENS,
    complete,
    count_tokens,
    generate,
    prompt_text,
    prompt_tokens,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("   \n\t", 0),
        ("hello", 1),
        ("Hello, world!", 4),
        ("don't", 3),  # don ' t
        ("snake_case 42x", 2),
        ("a.b.c", 5),
        ("  spaced   out  ", 2),
        ("héllo wörld", 2),
        ("1+1=2", 5),
    ],
)
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_prompt_text_of_chat_messages() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    assert prompt_text(messages) == "Be brief.\nHi there"
    assert prompt_tokens(messages) == 5


def test_prompt_text_of_responses_input() -> None:
    assert prompt_tokens("Tell me a joke") == 4
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "one two"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "three"},
    ]
    assert prompt_text(items) == "one two\nthree"
    assert prompt_tokens(items) == 3


@pytest.mark.parametrize("prompt", ["", "hello", "Write a poem about rate limits." * 20])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_pieces_are_one_token_each(prompt: str, seed: int) -> None:
    pieces = generate(prompt, None, seed, natural_max=64)
    assert pieces
    assert count_tokens("".join(pieces)) == len(pieces)
    assert all(count_tokens(piece) == 1 for piece in pieces)


def test_same_input_same_output() -> None:
    assert generate("abc", 100, 7) == generate("abc", 100, 7)
    assert complete("abc", 3, 7) == complete("abc", 3, 7)


def test_prompt_and_seed_change_the_reply() -> None:
    replies = {tuple(generate(f"prompt {i}", None, 0)) for i in range(20)}
    assert len(replies) == 20
    assert generate("abc", None, 1) != generate("abc", None, 2)


def test_reply_looks_like_words() -> None:
    text = "".join(generate("hello", None, 0, natural_max=40))
    assert text[0].isupper()
    assert text.endswith(".")
    assert all(word.strip(",.").isalpha() for word in text.split())


@pytest.mark.parametrize("natural_max", [1, 2, 5, 16, 100])
def test_natural_length_between_half_and_max(natural_max: int) -> None:
    for index in range(50):
        answer = complete(f"p{index}", None, 0, natural_max)
        assert (natural_max + 1) // 2 <= len(answer.pieces) <= natural_max
        assert answer.finish_reason == "stop"


def test_max_tokens_cuts_a_prefix_with_length() -> None:
    full = complete("x", None, 0, 16)
    cut = complete("x", 3, 0, 16)
    assert cut.pieces == full.pieces[:3]
    assert cut.finish_reason == "length"
    assert len(full.pieces) > 3


def test_max_tokens_not_reached_is_stop() -> None:
    full = complete("x", None, 0, 16)
    assert complete("x", len(full.pieces), 0, 16) == full
    assert complete("x", 10_000, 0, 16).finish_reason == "stop"


def test_default_natural_max() -> None:
    assert len(generate("y", None, 0)) <= DEFAULT_NATURAL_MAX


def test_cached_reply_is_not_shared_mutably() -> None:
    first = generate("z", None, 0)
    first.append("!")
    assert generate("z", None, 0) == first[:-1]


# -- a fixed reply length (long replies) --------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 16, 257, 500, 5_000])
def test_a_fixed_length_is_the_reply_length(length: int) -> None:
    for index in range(5):
        answer = complete(f"p{index}", None, 0, length=length)
        assert len(answer.pieces) == length
        assert answer.finish_reason == "stop"
        assert count_tokens("".join(answer.pieces)) == length


def test_a_fixed_length_overrides_natural_max() -> None:
    assert len(generate("x", None, 0, natural_max=4, length=300)) == 300


@pytest.mark.parametrize("length", [100, 500])
def test_a_long_reply_is_deterministic(length: int) -> None:
    assert generate("long", None, 3, length=length) == generate("long", None, 3, length=length)
    assert generate("long", None, 3, length=length) != generate("long", None, 4, length=length)


@pytest.mark.parametrize("length", [200, 500])  # cached whole, and made only as far as needed
def test_max_tokens_cuts_a_long_reply_to_a_prefix(length: int) -> None:
    full = complete("essay", None, 0, length=length)
    for cap in (1, 17, length - 1):
        cut = complete("essay", cap, 0, length=length)
        assert cut.pieces == full.pieces[:cap]
        assert cut.finish_reason == "length"
    assert complete("essay", length, 0, length=length) == full
    assert complete("essay", length + 1, 0, length=length) == full


def test_a_long_reply_looks_like_sentences() -> None:
    text = "".join(generate("essay", None, 0, length=2_000))
    assert text[0].isupper()
    assert text.endswith(".")
    sentences = [s.strip() for s in text.split(".") if s.strip()]
    assert len(sentences) > 10
    assert all(s[0].isupper() for s in sentences)


def test_the_length_is_capped() -> None:
    assert len(generate("x", None, 0, length=MAX_REPLY_TOKENS + 5)) == MAX_REPLY_TOKENS
    assert len(generate("x", None, 0, natural_max=MAX_REPLY_TOKENS * 2)) <= MAX_REPLY_TOKENS
    assert len(generate("x", None, 0, length=0)) == 1


def test_replies_are_pinned() -> None:
    """The same input gives the same reply across versions, and a fixed length equal to the
    varying one drawn gives that same reply (the length is drawn first either way)."""
    pinned = "Limits blue stone queue retry at pace usage quick window.."
    assert "".join(generate("abc", None, 0)) == pinned
    assert "".join(generate("abc", None, 0, length=12)) == pinned
