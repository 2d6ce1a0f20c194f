"""`mpq batch …`: submit OpenAI Batch files, follow them, collect results and errors."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from core.contract import BatchRecord, JobStatus
from core.feed import DEFAULT_PRIORITY, MAX_PRIORITY
from producer.batches import Batch
from producer.cli_common import (
    EXIT_FAILED,
    JSON_HELP,
    clean_errors,
    client,
    console,
    err_console,
    fail,
    print_json,
)
from producer.terminal import escape_markup

app = typer.Typer(help="Batches in the OpenAI Batch format (JSONL).", no_args_is_help=True)
OUTPUT_HELP = "File to write (default: stdout)."


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8") as out:
        yield out


def _write_lines(lines: Iterator[dict[str, object]], path: Path | None) -> int:
    count = 0
    with _output(path) as out:
        for line in lines:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            count += 1
    return count


def _counts(record: BatchRecord) -> str:
    c = record.counts
    return (f"{record.done}/{record.total} done: {c.get(JobStatus.SUCCEEDED, 0)} succeeded, "
            f"{c.get(JobStatus.FAILED, 0)} failed, {c.get(JobStatus.CANCELLED, 0)} cancelled, "
            f"{c.get(JobStatus.RUNNING, 0)} running, "
            f"{c.get(JobStatus.QUEUED, 0) + c.get(JobStatus.RETRYING, 0)} waiting"
            + (f"; {record.invalid} invalid lines" if record.invalid else "")
            + ("; still being submitted" if record.submitting else ""))


def follow(batch: Batch, total: int, timeout: float | None = None) -> BatchRecord:
    """Wait for the batch with a live progress bar: done, failed, rate, ETA."""
    started = time.monotonic()
    columns = (TextColumn("[bold]batch"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("[red]{task.fields[failed]} failed"),
               TextColumn("{task.fields[rate]:.1f} jobs/s"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("batch", total=total, failed=0, rate=0.0)

        def show(record: BatchRecord) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            failed = record.counts.get(JobStatus.FAILED, 0)
            progress.update(task, completed=record.done, failed=failed,
                            rate=record.done / elapsed)

        return batch.wait(timeout=timeout, on_progress=show, interval_s=0.25)


@app.command()
@clean_errors
def submit(
    file: Path = typer.Argument(..., help="OpenAI Batch input (JSONL); - for stdin."),
    proxy: str | None = typer.Option(None, help="Proxy for lines without a \"proxy\" key."),
    wait: bool = typer.Option(False, help="Follow the batch to its end with a progress bar."),
    strict: bool = typer.Option(False, help="Refuse the whole file if any line is invalid."),
    results: Path | None = typer.Option(None, help="With --wait: write the results here."),
    priority: int = typer.Option(
        DEFAULT_PRIORITY, min=DEFAULT_PRIORITY, max=MAX_PRIORITY,
        help="Weight when batches share the slots: 3 runs three lines for each line of a 1."),
) -> None:
    """Submit a batch; invalid lines are reported with their line numbers."""
    with client() as mpq:
        source = sys.stdin.buffer if str(file) == "-" else file.open("rb")
        with source:
            batch, errors = mpq.submit_batch(source, proxy, strict=strict, name=file.name,
                                             priority=priority)
        # The id first (a hex id: nothing in this line can fail), so whatever happens next,
        # the batch that is in can be followed.
        console.print(f"batch [bold]{batch.id}[/] submitted")
        for error in errors[:20]:
            err_console.print(f"[yellow]skipped[/] {escape_markup(error)}", highlight=False)
        if len(errors) > 20:
            err_console.print(f"[yellow]… and {len(errors) - 20} more invalid lines[/]")
        info = batch.info()
        console.print(f"{info.total} jobs queued"
                      + (f", {len(errors)} invalid lines" if errors else ""))
        if not wait:
            return
        final = follow(batch, info.total)
        console.print(_counts(final))
        if results is not None:
            written = _write_lines(batch.results(), results)
            console.print(f"{written} results written to {escape_markup(results)}")
        if final.counts.get(JobStatus.FAILED, 0) or errors:
            raise typer.Exit(EXIT_FAILED)


def batch_json(record: BatchRecord) -> dict[str, object]:
    """A batch as `--json` prints it: the record, counts by state, and how many are done."""
    return {**record.model_dump(mode="json"), "done": record.done}


@app.command()
@clean_errors
def status(batch_id: str = typer.Argument(..., help="Batch id."),
           as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Counts of a batch by state."""
    with client() as mpq:
        record = mpq.batch(batch_id).info()
    if as_json:
        print_json(batch_json(record))
        return
    console.print(f"batch {escape_markup(record.id)} ({record.status.value}): "
                  f"{_counts(record)}")


@app.command()
@clean_errors
def wait(batch_id: str = typer.Argument(..., help="Batch id."),
         timeout: float | None = typer.Option(None, help="Give up after this many seconds.")
         ) -> None:
    """Follow a batch to its end with a progress bar."""
    with client() as mpq:
        batch = mpq.batch(batch_id)
        final = follow(batch, batch.info().total, timeout)
        console.print(_counts(final))


@app.command()
@clean_errors
def results(batch_id: str = typer.Argument(..., help="Batch id."),
            output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP)
            ) -> None:
    """Succeeded jobs in the OpenAI Batch output format, matched by custom_id."""
    with client() as mpq:
        batch = mpq.batch(batch_id)
        batch.info()  # unknown id: a clear error, not an empty file
        written = _write_lines(batch.results(), output)
        if output is not None:
            console.print(f"{written} results written to {escape_markup(output)}")


@app.command()
@clean_errors
def errors(batch_id: str = typer.Argument(..., help="Batch id."),
           output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP)
           ) -> None:
    """Invalid lines, failed and cancelled jobs, in the OpenAI Batch error format."""
    with client() as mpq:
        batch = mpq.batch(batch_id)
        batch.info()
        written = _write_lines(batch.errors(), output)
        if output is not None:
            console.print(f"{written} errors written to {escape_markup(output)}")


@app.command()
@clean_errors
def cancel(batch_id: str = typer.Argument(..., help="Batch id.")) -> None:
    """Cancel every job of the batch that has not finished."""
    with client() as mpq:
        batch = mpq.batch(batch_id)
        batch.info()
        console.print(f"cancelled {batch.cancel()} jobs of batch {escape_markup(batch_id)}")


@app.command("retry-failed")
@clean_errors
def retry_failed(
    batch_id: str = typer.Argument(..., help="A finished batch."),
    wait: bool = typer.Option(False, help="Follow the new batch to its end."),
) -> None:
    """Run the failed and cancelled jobs of a finished batch again, as a new batch (the
    same requests, proxies and custom_ids)."""
    with client() as mpq:
        batch = mpq.retry_failed(batch_id)
        console.print(f"batch [bold]{batch.id}[/] submitted")
        info = batch.info()
        console.print(f"{info.total} jobs queued (retry of {escape_markup(batch_id)})")
        if not wait:
            return
        final = follow(batch, info.total)
        console.print(_counts(final))
        if final.counts.get(JobStatus.FAILED, 0):
            raise typer.Exit(EXIT_FAILED)


@app.command("list")
@clean_errors
def list_batches(limit: int = typer.Option(20, min=1, help="How many, newest first."),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Recent batches, with whole ids (to copy into other commands)."""
    with client() as mpq:
        records = mpq.batches(limit)
    if as_json:
        print_json([batch_json(record) for record in records])
        return
    table = Table("name", "status", "total", "succeeded", "failed", "invalid", "priority",
                  "share")
    # The id never shrinks or wraps: a narrow terminal cuts the name instead.
    table.columns.insert(0, Column("batch", no_wrap=True, min_width=max(
        (len(record.id) for record in records), default=5)))
    for record in records:
        table.add_row(escape_markup(record.id), escape_markup(record.name or ""),
                      record.status.value, str(record.total),
                      str(record.counts.get(JobStatus.SUCCEEDED, 0)),
                      str(record.counts.get(JobStatus.FAILED, 0)), str(record.invalid),
                      str(record.priority),
                      "" if record.share is None else f"{record.share:.0%}")
    console.print(table)


__all__ = ["app", "fail", "follow"]
