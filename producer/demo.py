"""`mpq demo`: the whole pipeline on a machine with nothing configured.

Starts the local stack (embedded Valkey, emulator, a worker, beat, Flower, the gateway),
creates a proxy through a management job, runs a 200-line batch with a progress bar, streams
one job's tokens live, writes the results file, uses the same proxy through the gateway with
the official `openai` client, prints a summary, and stops everything it started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from core.contract import BatchRecord, JobStatus
from core.redaction import mask_url
from core.settings import Settings
from modelproxy import (
    ModelProxyCreateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
)
from producer.batches import Batch
from producer.cli_batch import follow
from producer.client import Client
from producer.demo_gateway import run_gateway_step
from producer.gateway_keys import create_key, revoke_key
from producer.local_stack import LocalStack, StackOptions, local_stack
from producer.terminal import strip_controls

DEMO_LINES = 200
DEMO_MODEL = "demo-model"
RESULTS_FILE = Path("mpq-demo-results.jsonl")
# A visible pace on the emulator: 0.3 s to the first token, 20 ms per token.
EMULATOR_ARGS = ["--lifecycle-delay-s", "1", "--ttft-s", "0.3", "--tpot-s", "0.02"]
TOPICS = ["queues", "rate limits", "retries", "streams", "batches", "leases", "proxies"]


def demo_batch_lines(count: int) -> list[str]:
    """An OpenAI Batch input file's lines."""
    return [json.dumps({
        "custom_id": f"demo-{i:04d}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user",
                               "content": f"Explain {TOPICS[i % len(TOPICS)]} (#{i})."}]},
    }) for i in range(count)]


def demo_proxy(name: str) -> ModelProxyCreateInput:
    return ModelProxyCreateInput(
        model_proxy_name=name, description="created by mpq demo",
        proxy_config=ProxyConfig(
            endpoints=[ProxyConfigEndpoint(model_names=[DEMO_MODEL], model_service_name="demo")],
            # The workers keep to it cluster-wide, so the emulator never answers 429.
            policies=ProxyConfigPolicies(concurrency_limit=60),
        ),
    )


def run_demo(console: Console, redis_url: str | None) -> int:
    started = time.monotonic()
    options = StackOptions(redis_url=redis_url, slots=200, emulator_args=EMULATOR_ARGS)
    console.print("[bold]starting[/] Redis-compatible server, ModelProxy emulator, worker, "
                  "beat, Flower and the gateway …")
    with local_stack(options) as stack:
        _print_stack(console, stack)
        with Client(Settings(redis_url=stack.redis_url)) as mpq:
            final, tokens = _pipeline(console, mpq)
        gateway_ok = _gateway(console, stack)
        elapsed_s = time.monotonic() - started
        _summary(console, final, tokens=tokens, elapsed_s=elapsed_s, stack=stack)
    console.print("[green]demo finished[/]: everything it started is stopped")
    return 0 if final.counts.get(JobStatus.SUCCEEDED, 0) == final.total and gateway_ok else 1


def _gateway(console: Console, stack: LocalStack) -> bool:
    """The gateway step, with an API key that lives only as long as the step."""
    if stack.gateway_url is None:
        return True
    settings = Settings(redis_url=stack.redis_url)
    key, secret = create_key(settings, "mpq demo")
    try:
        return run_gateway_step(console, stack.gateway_url, secret, DEMO_MODEL)
    finally:
        revoke_key(settings, key.id)


def _print_stack(console: Console, stack: LocalStack) -> None:
    console.print(f"  Redis       {mask_url(stack.redis_url)}")
    console.print(f"  ModelProxy  {stack.modelproxy_url or 'AgentRun (configured)'}")
    console.print(f"  Flower      {stack.flower_url}  (user {stack.flower_user}, "
                  f"password {stack.flower_password})")
    console.print(f"  Gateway     {stack.gateway_url}  (OpenAI API)")


def _pipeline(console: Console, mpq: Client) -> tuple[BatchRecord, int]:
    """Proxy, batch, results, one live stream; returns the batch and its tokens."""
    name = f"demo-{int(time.time())}"
    console.print(f"[bold]proxy[/] creating {name} through a management job …")
    mpq.create_proxy(demo_proxy(name)).result(120)
    ready = mpq.wait_proxy(name, timeout_s=120).result(150).result or {}
    console.print(f"  {name} is {ready.get('status')}")

    console.print(f"[bold]batch[/] submitting {DEMO_LINES} lines (OpenAI Batch format) …")
    batch, _ = mpq.submit_batch(demo_batch_lines(DEMO_LINES), name, name="demo.jsonl")
    final = follow(batch, DEMO_LINES, timeout=300)
    tokens = _write_results(console, batch)

    console.print("[bold]stream[/] one job, tokens as they arrive:")
    job = mpq.chat(name, [{"role": "user", "content": "Say hello to the mpq demo."}],
                   stream=True)
    for event in job.stream():
        console.print(strip_controls(event.text), end="", markup=False, highlight=False)
    record = job.result(60)
    console.print(f"\n  ({record.usage and record.usage.get('total_tokens')} tokens, "
                  f"attempt {record.attempt})")
    return final, tokens


def _write_results(console: Console, batch: Batch) -> int:
    tokens = 0
    with RESULTS_FILE.open("w", encoding="utf-8") as out:
        for line in batch.results():
            usage = line["response"]["body"].get("usage") or {}
            tokens += int(usage.get("total_tokens", 0))
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    console.print(f"  results written to {RESULTS_FILE.resolve()}")
    return tokens


def _summary(console: Console, final: BatchRecord, *, tokens: int, elapsed_s: float,
             stack: LocalStack) -> None:
    counts = final.counts
    runtime_s = (final.finished_at or time.time()) - (final.created_at or time.time())
    console.print("[bold]summary[/]")
    console.print(f"  jobs       {final.total}: {counts.get(JobStatus.SUCCEEDED, 0)} succeeded, "
                  f"{counts.get(JobStatus.FAILED, 0)} failed, "
                  f"{counts.get(JobStatus.CANCELLED, 0)} cancelled")
    console.print(f"  tokens     {tokens}")
    rate = final.total / max(runtime_s, 1e-6)
    console.print(f"  batch      {runtime_s:.1f} s, {rate:.1f} jobs/s")
    console.print(f"  demo       {elapsed_s:.1f} s in all")
    console.print(f"  Flower     {stack.flower_url} (was running during the demo)")
