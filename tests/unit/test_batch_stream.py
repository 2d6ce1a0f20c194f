"""The Batch input parser as a stream: it reads a line only when its verdict is asked for, and
remembers custom_ids compactly (`CustomIds`) across the growth of its table."""

from __future__ import annotations

import json
from collections.abc import Iterator

from producer.batch_format import BatchLine, CustomIds, LineError, iter_batch, parse_batch


def chat_line(custom_id: str) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": "hi"}]}})


class CountingLines:
    """An input read once, counting the lines taken from it."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self.taken = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            self.taken += 1
            yield line


def test_lines_are_read_one_verdict_at_a_time() -> None:
    source = CountingLines([chat_line("a"), "", "not json", chat_line("b"), chat_line("a")])
    verdicts = iter_batch(source, "p")
    assert source.taken == 0  # nothing read before the first verdict is asked for
    first = next(verdicts)
    assert isinstance(first, BatchLine) and first.custom_id == "a"
    assert source.taken == 1
    second = next(verdicts)  # the blank line is skipped, but counted
    assert isinstance(second, LineError) and second.line_no == 3
    assert source.taken == 3
    rest = list(verdicts)
    assert [v.line_no for v in rest] == [4, 5]
    assert str(rest[1]) == 'line 5: duplicate custom_id "a" (first on line 1)'
    assert source.taken == 5


def test_parse_batch_gathers_the_stream() -> None:
    lines = [chat_line("a"), "[]", chat_line("b")]
    parsed = parse_batch(lines, "p")
    streamed = list(iter_batch(lines, "p"))
    assert parsed.lines == [v for v in streamed if isinstance(v, BatchLine)]
    assert parsed.errors == [v for v in streamed if isinstance(v, LineError)]


def test_custom_ids_remember_each_first_line_as_the_table_grows() -> None:
    seen = CustomIds()
    count = 5_000  # many doublings of the first slots
    for n in range(1, count + 1):
        assert seen.first_line(f"id-{n}", n) == n
    assert len(seen) == count
    for n in range(1, count + 1, 97):
        assert seen.first_line(f"id-{n}", count + n) == n
    assert seen.first_line("", 1) == 1  # any string, even one no line may carry
    assert len(seen) == count + 1
