"""`mpq job …`: one job by its id: its state, cancelling it, its result."""

from __future__ import annotations

from datetime import datetime

import typer

from core.contract import JobKind, JobRecord, JobStatus
from producer.cli_common import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    RAW_HELP,
    clean_errors,
    client,
    console,
    fail,
    print_json,
)
from producer.jobs import Job, JobFailedError, result_text
from producer.terminal import escape_markup, safe_json, write_text

app = typer.Typer(help="One job: status, cancel, result.", no_args_is_help=True)
JOB_ID_HELP = "Job id."
JSON_HELP = "Print the whole record as JSON."
TEXT_KINDS = frozenset({JobKind.CHAT, JobKind.RESPONSES})


def _time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _details(record: JobRecord) -> list[tuple[str, object]]:
    """What `status` shows besides the status line; None values are left out."""
    return [
        ("kind", record.kind.value),
        ("proxy", record.proxy),
        ("batch", record.batch_id),
        ("custom_id", record.custom_id),
        ("created", _time(record.created_at)),
        ("started", _time(record.started_at)),
        ("finished", _time(record.finished_at)),
        ("worker", record.worker),
        ("error", record.error),
    ]


@app.command()
@clean_errors
def status(job_id: str = typer.Argument(..., help=JOB_ID_HELP),
           as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Status, attempt, errors and times of one job."""
    with client() as mpq:
        record = mpq.job(job_id).record()
    if as_json:
        print_json(record.model_dump(mode="json"))
        return
    console.print(f"job {escape_markup(record.id)}: [bold]{record.status.value}[/] "
                  f"(attempt {record.attempt})", highlight=False)
    for label, value in _details(record):
        if value is not None:
            console.print(f"  {label:<10} {escape_markup(value)}", highlight=False)
    for number, error in enumerate(record.errors, start=1):
        console.print(f"  attempt {number} failed: {escape_markup(error)}", highlight=False)


@app.command()
@clean_errors
def cancel(job_id: str = typer.Argument(..., help=JOB_ID_HELP)) -> None:
    """Cancel one job unless it has ended already; a running stream stops within a second."""
    with client() as mpq:
        job = mpq.job(job_id)
        job.record()  # unknown id: a clear error (3), not "nothing to cancel"
        if job.cancel():
            console.print(f"job {escape_markup(job_id)} cancelled", highlight=False)
            return
        ended = job.status()
    console.print(f"job {escape_markup(job_id)} already {ended.value}: nothing to cancel",
                  highlight=False)


def _final(job: Job, timeout: float) -> JobRecord:
    """The job's final record, waiting up to `timeout` s (0: only look); a succeeded
    embeddings job's with its vectors."""
    record = job.record()
    if not record.status.is_final and timeout <= 0:
        return record
    try:
        return job.result(timeout)
    except JobFailedError as exc:
        return exc.record


@app.command()
@clean_errors
def result(job_id: str = typer.Argument(..., help=JOB_ID_HELP),
           as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
           raw: bool = typer.Option(False, help=RAW_HELP),
           timeout: float = typer.Option(0, min=0, help="Wait this many seconds for the end "
                                         "(default: do not wait).")) -> None:
    """The reply text of a chat or Responses job, the result JSON of any other; exit 1 if
    the job failed or was cancelled."""
    with client() as mpq:
        record = _final(mpq.job(job_id), timeout)
    if not record.status.is_final:
        fail(f"job {record.id} is {record.status.value}, not finished"
             + ("" if timeout else " (--timeout waits for it)"), EXIT_UNAVAILABLE)
    if as_json:
        print_json(record.model_dump(mode="json"))
    elif record.status is JobStatus.SUCCEEDED:
        if record.kind in TEXT_KINDS:
            write_text(result_text(record), raw=raw)
        else:
            write_text(safe_json(record.result), raw=True)
    if record.status is not JobStatus.SUCCEEDED:
        if as_json:
            raise typer.Exit(EXIT_FAILED)
        fail(f"job {record.id} {record.status.value}"
             + (f": {record.error}" if record.error else ""))
