"""Run every benchmark (`python -m bench`, or some of them with `--only`) and print one
table: benchmark, figure, limit, ratio, target, result. Each benchmark measures its own
limit in the same run on the same machine; rows without a target are for information."""

from __future__ import annotations

import argparse
import asyncio
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench import (
    batch_cpu,
    embeddings,
    enqueue,
    fairness,
    gateway,
    gateway_files,
    gateway_stream,
    inflight,
    isolation,
    lanes,
    ratelimit,
    streaming,
    submit_memory,
    throughput,
)
from bench.harness import arguments
from core.embeddings import FLOAT32_BYTES

INFO = "info"


@dataclass(frozen=True)
class Row:
    benchmark: str
    figure: str
    limit: str
    ratio: str
    target: str
    result: str  # "pass", "FAIL", "info" or "error"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def limit_rule(r: dict[str, Any]) -> str:
    """The limit of `throughput` and `embeddings`, with its parts."""
    return (f"{r['limit']:.0f}/s = min(slots/latency {r['slot_limit']:.0f}, emulator "
            f"{r['emulator_capacity']:.0f}, Celery no-op {r['celery_noop_rate']:.0f})")


def throughput_rows(r: dict[str, Any]) -> list[Row]:
    run, big = r["run"], r["big"]
    shape = f"{run['processes']} processes x {run['slots'] // run['processes']} slots"
    name = f"throughput: {run['jobs']} jobs, {shape}, {run['latency_s']:g} s"
    limit = (f"{r['limit']:.0f}/s = min(in flight/latency {r['slot_limit']:.0f} "
             f"({run['slots']} slots, peak {run['peak_in_flight']}), emulator "
             f"{r['emulator_capacity']:.0f}, direct client at {run['latency_s']:g} s "
             f"{r['direct_rate']:.0f}, Celery no-op {r['celery_noop_rate']:.0f})")
    big_name = f"throughput: {big['slots']} slots, {big['latency_s']:g} s"
    every = f"all {run['processes']} worker processes"
    return [
        Row(name, f"{run['rate']:.0f} jobs/s", limit, f"{r['ratio']:.2f}",
            f">= {throughput.TARGET}", verdict(r["ratio"] >= throughput.TARGET)),
        Row(f"throughput: Celery tasks that only sleep {run['latency_s']:g} s, {shape}",
            f"{r['celery_sleeping_rate']:.0f} tasks/s", f"{r['limit']:.0f}/s",
            f"{r['celery_sleeping_rate'] / r['limit']:.2f}", "", INFO),
        Row(f"throughput: worker CPU per job ({every})", f"{run['cpu_ms_per_job']:.2f} ms "
            f"(Celery no-op: {r['celery_noop_cpu_ms_per_task']:.2f} ms/task)",
            f"{1000 / run['cpu_ms_per_job']:.0f} jobs/s per core", "", "", INFO),
        Row(f"{big_name}: peak in flight", str(big["peak_in_flight"]), str(big["slots"]),
            f"{big['peak_in_flight'] / big['slots']:.2f}", ">= 1.00",
            verdict(big["peak_in_flight"] >= big["slots"])),
        Row(f"{big_name}: worker peak RSS ({every})", f"{big['peak_rss_mb']:.0f} MB",
            f"{big['rate']:.0f} of {big['slots'] / big['latency_s']:.0f} jobs/s",
            f"{big['rate'] * big['latency_s'] / big['slots']:.2f}", "", INFO),
    ]


def embeddings_rows(r: dict[str, Any]) -> list[Row]:
    run = r["run"]
    name = (f"embeddings: {run['jobs']} jobs of 1-{embeddings.INPUTS_MAX} inputs, "
            f"{run['slots']} slots, {run['latency_s']:g} s")
    raw = f"{run['dimensions'] * FLOAT32_BYTES} B raw float32"
    stored = f"embeddings: Redis bytes a vector, {run['sampled']} jobs"
    target = embeddings.TARGET_BYTES_RATIO
    return [
        Row(name, f"{run['rate']:.0f} jobs/s", limit_rule(r), f"{r['ratio']:.2f}", "", INFO),
        Row(f"embeddings: {run['vectors']} vectors of {run['dimensions']} dimensions",
            f"{run['vector_rate']:.0f} vectors/s",
            f"{r['vector_limit']:.0f}/s ({run['vectors'] / run['jobs']:.1f} a job)",
            f"{run['vector_rate'] / r['vector_limit']:.2f}", "", INFO),
        Row("embeddings: worker CPU per job", f"{run['cpu_ms_per_job']:.2f} ms",
            f"{1000 / run['cpu_ms_per_job']:.0f} jobs/s per core", "", "", INFO),
        Row(f"{stored}: mean", f"{run['bytes_per_vector_mean']:.0f} B", raw,
            f"{run['bytes_ratio_mean']:.3f}", f"<= {target}",
            verdict(run["bytes_ratio_mean"] <= target)),
        Row(f"{stored}: max ({run['max_at_vectors']} a job)",
            f"{run['bytes_per_vector_max']:.0f} B", raw, f"{run['bytes_ratio_max']:.3f}", "",
            INFO),
    ]


def ratelimit_rows(runs: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for run in runs:
        unit = "req/s" if run["limit"] == "rpm" else "tokens/s"
        name = (f"ratelimit: rpm {ratelimit.RPM}" if run["limit"] == "rpm"
                else f"ratelimit: tpm {ratelimit.TPM}")
        name += f", {ratelimit.WORKERS} workers, {run['jobs']} jobs"
        rows.append(Row(name, f"{run['achieved_per_s']:.1f} {unit}",
                        f"{run['allowed_per_s']:.0f} {unit}", f"{run['ratio']:.3f}",
                        f">= {ratelimit.TARGET}", verdict(run["ratio"] >= ratelimit.TARGET)))
        rows.append(Row(f"{name}: 429s in steady state", str(run["rejected_steady"]),
                        f"({run['rejected_total']} in all)", "", "= 0",
                        verdict(run["rejected_steady"] == 0)))
    return rows


def streaming_rows(r: dict[str, Any]) -> list[Row]:
    name = f"streaming: {r['streams']} streams"
    overhead = r["p99_overhead_ms"]
    target = streaming.TARGET_P99_OVERHEAD_MS
    return [
        Row(f"{name}: chunk latency p99", f"{r['mpq']['p99_ms']:.1f} ms",
            f"direct SSE {r['direct']['p99_ms']:.1f} ms", f"{overhead:+.1f} ms",
            f"< +{target:.0f} ms", verdict(overhead < target)),
        Row(f"{name}: p99 from chunk {streaming.STARTING_CHUNKS + 1} on",
            f"{r['mpq_steady']['p99_ms']:.1f} ms",
            f"direct SSE {r['direct_steady']['p99_ms']:.1f} ms",
            f"{r['mpq_steady']['p99_ms'] - r['direct_steady']['p99_ms']:+.1f} ms", "", INFO),
        Row(f"{name}: chunk latency p50", f"{r['mpq']['p50_ms']:.1f} ms",
            f"direct SSE {r['direct']['p50_ms']:.1f} ms", f"{r['p50_overhead_ms']:+.1f} ms",
            "", INFO),
        Row(f"{name}: chunks/s, unpaced", f"{r['mpq_chunks_per_s']:.0f}/s",
            f"direct SSE {r['direct_chunks_per_s']:.0f}/s",
            f"{r['mpq_chunks_per_s'] / r['direct_chunks_per_s']:.2f}", "", INFO),
        Row(f"{name}: chunks/s, paced", f"{r['paced_chunks_per_s']:.0f}/s", "", "", "", INFO),
        Row("streaming: Celery no-op rate (this machine)", f"{r['celery_noop_rate']:.0f} tasks/s",
            "", "", "", INFO),
    ]


def inflight_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for row in (r["small"], r["large"]):
        name = f"inflight: {row['slots']} slots, {r['latency_s']:g} s"
        rows.append(Row(name, f"{row['rate']:.1f} jobs/s", f"{row['limit']:.0f}/s (slots/latency)",
                        f"{row['ratio']:.2f}", "", INFO))
        rows.append(Row(f"{name}: peak in flight", str(row["peak_in_flight"]),
                        str(row["slots"]), f"{row['peak_in_flight'] / row['slots']:.2f}",
                        "= 1.00", verdict(row["peak_in_flight"] >= row["slots"])))
    return rows


def enqueue_rows(r: dict[str, Any]) -> list[Row]:
    limit = f"{r['lines'] / r['limit_s']:.0f} lines/s (raw pipelined writes)"
    return [
        Row(f"enqueue: {r['lines']} lines", f"{r['lines'] / r['enqueue_s']:.0f} lines/s",
            limit, f"{r['ratio']:.2f}", f">= {enqueue.TARGET}",
            verdict(r["ratio"] >= enqueue.TARGET)),
        Row("enqueue: records + a message per line",
            f"{r['lines'] / r['messages_s']:.0f} lines/s", limit,
            f"{r['limit_s'] / r['messages_s']:.2f}", "", INFO),
        Row("enqueue: the send_task loop", f"{r['lines'] / r['send_task_loop_s']:.0f} lines/s",
            limit, f"{r['limit_s'] / r['send_task_loop_s']:.2f}", "", INFO),
    ]


def gateway_rows(r: dict[str, Any]) -> list[Row]:
    return gateway_call_rows(r["calls"]) + gateway_stream_rows(r["streams"]) + \
        gateway_file_rows(r["files"])


def gateway_call_rows(r: dict[str, Any]) -> list[Row]:
    name = f"gateway: {r['calls']} direct chat calls"
    runs, target = r["sequential"], gateway.TARGET_OVERHEAD_MS
    rows = []
    for at in ("p50", "p99"):
        overhead = gateway.overhead_ms(runs, "httpx", f"{at}_ms")
        rows.append(Row(f"{name}, httpx: {at}", f"{runs['httpx'][f'{at}_ms']:.1f} ms",
                        f"Python API {runs['python'][f'{at}_ms']:.1f} ms", f"{overhead:+.1f} ms",
                        f"< +{target:.0f} ms", verdict(overhead < target)))

    def both(found: dict[str, Any], path: str) -> tuple[str, str, str]:
        return (f"{found[path]['p50_ms']:.1f} / {found[path]['p99_ms']:.1f} ms",
                f"Python API {found['python']['p50_ms']:.1f} / {found['python']['p99_ms']:.1f}",
                f"{gateway.overhead_ms(found, path, 'p50_ms'):+.1f} / "
                f"{gateway.overhead_ms(found, path, 'p99_ms'):+.1f} ms")

    rows.append(Row(f"{name}, openai client: p50 / p99", *both(runs, "openai"), "", INFO))
    rows.append(Row(f"{name}, httpx, {r['concurrency']} at once: p50 / p99",
                    *both(r["concurrent"], "httpx"), "", INFO))
    rows.append(Row("gateway: CPU per direct call", f"{r['gateway_cpu_ms_per_call']:.2f} ms",
                    f"Python API {r['python_cpu_ms_per_call']:.2f} ms in its caller",
                    f"{r['gateway_cpu_ms_per_call'] / r['python_cpu_ms_per_call']:.1f}x", "",
                    INFO))
    return rows


def gateway_stream_rows(r: dict[str, Any]) -> list[Row]:
    name = f"gateway: {r['streams']} relayed streams"
    target = gateway_stream.TARGET_P99_OVERHEAD_MS
    return [
        Row(f"{name}: chunk latency p99", f"{r['gateway']['p99_ms']:.1f} ms",
            f"direct SSE {r['direct']['p99_ms']:.1f} ms", f"{r['p99_overhead_ms']:+.1f} ms",
            f"< +{target:.0f} ms", verdict(r["p99_overhead_ms"] < target)),
        Row(f"{name}: p99 from chunk {streaming.STARTING_CHUNKS + 1} on",
            f"{r['gateway_steady']['p99_ms']:.1f} ms",
            f"direct SSE {r['direct_steady']['p99_ms']:.1f} ms",
            f"{r['steady_p99_overhead_ms']:+.1f} ms", "", INFO),
        Row(f"{name}: p99 against mpq's own stream", f"{r['gateway']['p99_ms']:.1f} ms",
            f"AsyncJob.stream() {r['mpq']['p99_ms']:.1f} ms",
            f"{r['p99_over_mpq_ms']:+.1f} ms", "", INFO),
        Row(f"{name}: chunk latency p50", f"{r['gateway']['p50_ms']:.1f} ms",
            f"direct SSE {r['direct']['p50_ms']:.1f} ms", f"{r['p50_overhead_ms']:+.1f} ms",
            "", INFO),
        Row("gateway: CPU per relayed chunk", f"{r['gateway_cpu_us_per_chunk']:.0f} µs",
            f"{1e6 / r['gateway_cpu_us_per_chunk']:.0f} chunks/s per core", "", "", INFO),
    ]


def gateway_file_rows(r: dict[str, Any]) -> list[Row]:
    name = f"gateway: a {r['lines']:,}-line file ({r['mb']:.0f} MB)"
    target = gateway_files.TARGET_RATIO
    return [Row(f"{name}: {way}", f"{r[f'{way}_mb_s']:.0f} MB/s",
                f"raw HTTP {method} {r[f'raw_{way}_mb_s']:.0f} MB/s", f"{r[f'{way}_ratio']:.2f}",
                f">= {target}", verdict(r[f"{way}_ratio"] >= target))
            for way, method in (("upload", "PUT"), ("download", "GET"))]


def lanes_rows(r: dict[str, Any]) -> list[Row]:
    idle, loaded = r["idle"], r["loaded"]
    name = (f"lanes: {loaded['jobs']} interactive jobs during a {r['lines']:,}-line batch, "
            f"{r['slots']} slots, {r['latency_s']:g} s: queue wait")
    interval = f"{r['slot_interval_ms']:.1f} ms"
    return [
        Row(f"{name} p99", f"{loaded['p99_ms']:.1f} ms",
            f"idle p99 {idle['p99_ms']:.1f} ms + {lanes.SLOT_INTERVALS} x slot-free "
            f"{interval} + {lanes.LAG_ALLOWANCE_S * 1000:.0f} ms",
            f"{loaded['p99_ms'] / r['limit_ms']:.2f}", f"<= {r['limit_ms']:.0f} ms",
            verdict(r["ok"])),
        Row(f"{name} p50", f"{loaded['p50_ms']:.1f} ms", f"idle p50 {idle['p50_ms']:.1f} ms",
            "", "", INFO),
        Row("lanes: the same wait without lanes (lines queued ahead / rate)",
            f"{r['fifo_wait_s']:.1f} s", f"{r['batch_rate']:.0f} lines/s", "", "", INFO),
    ]


def fairness_rows(r: dict[str, Any]) -> list[Row]:
    equal, weighted = r["equal"], r["weighted"]
    name = (f"fairness: 2 x {equal['lines']:,}-line batches {r['gap_s']:g} s apart, "
            f"{r['slots']} slots, {r['latency_s']:g} s")
    rates = sorted((equal["first_rate"], equal["second_rate"]))
    low, high = weighted["priorities"]
    return [
        Row(f"{name}: slower / faster", f"{rates[0]:.1f} lines/s", f"{rates[1]:.1f} lines/s",
            f"{equal['ratio']:.2f}", f">= {fairness.TARGET}",
            verdict(equal["ratio"] >= fairness.TARGET)),
        Row(f"{name}: priority {high} / priority {low}", f"{weighted['second_rate']:.1f} "
            f"lines/s", f"{weighted['first_rate']:.1f} lines/s", f"{weighted['ratio']:.2f}",
            f"~{high / low:g}", INFO),
    ]


def isolation_rows(r: dict[str, Any]) -> list[Row]:
    shared, alone = r["shared"], r["alone"]
    name = (f"isolation: {alone['lines']:,} lines on a free proxy while {r['throttled_lines']:,}"
            f" wait on one at {r['throttled_rpm']} rpm, {r['slots']} slots, "
            f"{r['latency_s']:g} s")
    return [Row(name, f"{shared['rate']:.1f} lines/s", f"alone {alone['rate']:.1f} lines/s",
                f"{r['ratio']:.2f}", f">= {isolation.TARGET}",
                verdict(r["ratio"] >= isolation.TARGET))]


def batch_cpu_rows(r: dict[str, Any]) -> list[Row]:
    run = r["run"]
    name = (f"batch_cpu: a {run['lines']:,}-line batch, {run['processes']} worker processes, "
            "latency 0")
    return [
        Row(f"{name}: lines per worker CPU-second", f"{run['lines_per_cpu_s']:.0f}/CPU-s",
            f"Celery no-op {r['noop_per_cpu_s']:.0f}/CPU-s", f"{r['ratio']:.2f}",
            f">= {batch_cpu.TARGET}", verdict(r["ratio"] >= batch_cpu.TARGET)),
        Row(f"{name}: rate", f"{run['lines_per_s']:.0f} lines/s",
            f"Celery no-op {r['noop_per_s']:.0f} tasks/s", "", "", INFO),
    ]


def submit_memory_rows(r: dict[str, Any]) -> list[Row]:
    limit = f"a {submit_memory.BASE_LINES}-line file {r['base_mb']:.0f} MB"
    target = submit_memory.TARGET_MB
    return [Row(f"submit_memory: mpq batch submit of {run['lines']:,} lines "
                f"({run['file_mb']:.0f} MB): peak RSS", f"{run['peak_mb']:.0f} MB", limit,
                f"{run['peak_mb'] / r['base_mb']:.2f}", f"<= {target} MB",
                verdict(run["peak_mb"] <= target))
            for run in r["runs"]]


Bench = tuple[Callable[[argparse.Namespace], Coroutine[Any, Any, Any]],
              Callable[[Any], None], Callable[[Any], list[Row]]]
BENCHES: dict[str, Bench] = {
    "throughput": (lambda a: throughput.measure(a.throughput_jobs), throughput.report,
                   throughput_rows),
    "ratelimit": (lambda a: ratelimit.measure(a.ratelimit_jobs), ratelimit.report,
                  ratelimit_rows),
    "streaming": (lambda a: streaming.measure(rounds=a.streaming_rounds), streaming.report,
                  streaming_rows),
    "inflight": (lambda a: inflight.results(), inflight.report, inflight_rows),
    "enqueue": (lambda a: enqueue.results(a.enqueue_repeat), enqueue.report, enqueue_rows),
    "embeddings": (lambda a: embeddings.measure(a.embeddings_jobs), embeddings.report,
                   embeddings_rows),
    "gateway": (lambda a: gateway.measure(a.gateway_calls), gateway.report, gateway_rows),
    "lanes": (lambda a: lanes.measure(), lanes.report, lanes_rows),
    "submit_memory": (lambda a: submit_memory.measure(), submit_memory.report,
                      submit_memory_rows),
    "fairness": (lambda a: fairness.measure(), fairness.report, fairness_rows),
    "isolation": (lambda a: isolation.measure(), isolation.report, isolation_rows),
    "batch_cpu": (lambda a: batch_cpu.measure(a.batch_cpu_lines), batch_cpu.report,
                  batch_cpu_rows),
}


def print_table(rows: list[Row]) -> None:
    headers = Row("benchmark", "figure", "limit", "ratio", "target", "result")
    widths = [max(len(getattr(r, f)) for r in [headers, *rows]) for f in Row.__annotations__]
    for row in [headers, *rows]:
        cells = [getattr(row, f) for f in Row.__annotations__]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", action="append", choices=sorted(BENCHES),
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--throughput-jobs", type=int, default=throughput.DEFAULT_JOBS)
    parser.add_argument("--ratelimit-jobs", type=int, default=2_000,
                        help="jobs per limit (the benchmark alone defaults to 3,000)")
    parser.add_argument("--streaming-rounds", type=int, default=streaming.DEFAULT_ROUNDS)
    parser.add_argument("--enqueue-repeat", type=int, default=1,
                        help="best of this many runs (the benchmark alone: 3)")
    parser.add_argument("--embeddings-jobs", type=int, default=embeddings.DEFAULT_JOBS)
    parser.add_argument("--gateway-calls", type=int, default=gateway.DEFAULT_CALLS,
                        help="direct calls a path")
    parser.add_argument("--batch-cpu-lines", type=int, default=batch_cpu.DEFAULT_LINES)
    args = parser.parse_args()
    rows: list[Row] = []
    started = time.monotonic()
    for name in args.only or list(BENCHES):
        run, report, to_rows = BENCHES[name]
        print(f"== {name}", flush=True)
        begun = time.monotonic()
        try:
            found = asyncio.run(run(args))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            rows.append(Row(name, f"error: {type(exc).__name__}", "", "", "", "error"))
            continue
        report(found)
        rows += to_rows(found)
        print(f"({time.monotonic() - begun:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s")
    print_table(rows)
    return 1 if any(r.result in ("FAIL", "error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
