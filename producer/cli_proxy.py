"""`mpq proxy …`: ModelProxy management, run as management jobs by the workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from modelproxy import (
    ModelProxyCreateInput,
    ModelProxyUpdateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
    ProxyConfigTokenRateLimiter,
)
from producer.cli_common import clean_errors, client, console, print_json
from producer.jobs import Job
from producer.terminal import escape_markup

app = typer.Typer(help="Create, inspect, change and delete proxies.", no_args_is_help=True)

TIMEOUT_HELP = "Seconds to wait for a worker to finish the job."
COLUMNS = ("modelProxyName", "status", "proxyMode", "description", "lastUpdatedAt")


def _load_spec(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    except RecursionError as exc:
        raise ValueError(f"{path}: nested too deeply") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of proxy fields")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own text spans several lines)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def _show(proxies: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(proxies if len(proxies) != 1 else proxies[0])
        return
    table = Table(*COLUMNS)
    for proxy in proxies:
        table.add_row(*(escape_markup(proxy.get(column) or "") for column in COLUMNS))
    console.print(table)


def _run(job: Job, timeout: float) -> dict[str, Any]:
    return job.result(timeout).result or {}


def _policies(tpm: int | None, concurrency: int | None) -> ProxyConfigPolicies | None:
    if tpm is None and concurrency is None:
        return None
    limiter = ProxyConfigTokenRateLimiter(tpm=tpm) if tpm else None
    return ProxyConfigPolicies(token_rate_limiter=limiter, concurrency_limit=concurrency)


@app.command()
@clean_errors
def create(
    name: str = typer.Argument(..., help="Proxy name."),
    model: list[str] = typer.Option([], help="Model name(s) the proxy serves (repeatable)."),
    service: str | None = typer.Option(None, help="Upstream ModelService name."),
    description: str | None = typer.Option(None, help="Description."),
    tpm: int | None = typer.Option(None, min=1, help="Policy: tokens per minute."),
    concurrency: int | None = typer.Option(None, min=1, help="Policy: concurrent requests."),
    file: Path | None = typer.Option(None, help="Proxy fields as JSON or YAML (wire names)."),
    wait: bool = typer.Option(True, help="Wait until the proxy is READY (or failed)."),
    timeout: float = typer.Option(120, help=TIMEOUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a proxy from flags or a file."""
    fields: dict[str, Any] = _load_spec(file) if file else {}
    fields.setdefault("modelProxyName", name)
    spec = ModelProxyCreateInput.model_validate(fields)
    if model or service or description or tpm or concurrency:
        endpoint = ProxyConfigEndpoint(model_names=model or None, model_service_name=service)
        spec = spec.model_copy(update={
            "description": description or spec.description,
            "proxy_config": ProxyConfig(endpoints=[endpoint], policies=_policies(tpm, concurrency)),
        })
    with client() as mpq:
        proxy = _run(mpq.create_proxy(spec), timeout)
        if wait:
            proxy = _run(mpq.wait_proxy(name, timeout), timeout)
    _show([proxy], as_json)


@app.command()
@clean_errors
def get(name: str = typer.Argument(..., help="Proxy name."),
        timeout: float = typer.Option(60, help=TIMEOUT_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show one proxy."""
    with client() as mpq:
        _show([_run(mpq.get_proxy(name), timeout)], as_json)


@app.command("list")
@clean_errors
def list_proxies(timeout: float = typer.Option(60, help=TIMEOUT_HELP),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every proxy."""
    with client() as mpq:
        _show(_run(mpq.list_proxies(), timeout).get("items", []), as_json)


@app.command()
@clean_errors
def update(
    name: str = typer.Argument(..., help="Proxy name."),
    description: str | None = typer.Option(None, help="New description."),
    file: Path | None = typer.Option(None, help="Fields to change as JSON or YAML."),
    wait: bool = typer.Option(True, help="Wait until the proxy is READY again."),
    timeout: float = typer.Option(120, help=TIMEOUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Change a proxy (only the fields given)."""
    fields: dict[str, Any] = _load_spec(file) if file else {}
    if description is not None:
        fields["description"] = description
    if not fields:
        raise ValueError("nothing to change: pass --description or --file")
    with client() as mpq:
        proxy = _run(mpq.update_proxy(name, ModelProxyUpdateInput.model_validate(fields)),
                     timeout)
        if wait:
            proxy = _run(mpq.wait_proxy(name, timeout), timeout)
    _show([proxy], as_json)


@app.command()
@clean_errors
def delete(name: str = typer.Argument(..., help="Proxy name."),
           timeout: float = typer.Option(60, help=TIMEOUT_HELP)) -> None:
    """Delete a proxy (a missing one counts as deleted)."""
    with client() as mpq:
        proxy = _run(mpq.delete_proxy(name), timeout)
    console.print(f"proxy {escape_markup(name)}: {escape_markup(proxy.get('status'))}")


@app.command()
@clean_errors
def refresh(timeout: float = typer.Option(60, help=TIMEOUT_HELP)) -> None:
    """Refresh the workers' proxy cache now (beat does it periodically)."""
    with client() as mpq:
        report = _run(mpq.refresh_proxies(), timeout)
    console.print(escape_markup(" ".join(f"{key}={value}" for key, value in report.items())))
