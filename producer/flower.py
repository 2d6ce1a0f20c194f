"""`mpq flower`: Flower on our broker, with our settings, safe by default.

- Login: basic auth unless `--no-auth`, or single sign-on (`--oauth-provider`, Flower's
  GitHub, GitLab, Google or Okta login). The basic-auth password comes from
  `MPQ_FLOWER_PASSWORD` or `--password-file`, or is generated and printed. Flower's REST API
  needs the same login.
- Flower binds to loopback unless told otherwise, and refuses a non-loopback address
  without a login unless forced (`--force-open`).
- What this module decides (address, port, login, read-only) is what Flower gets: Flower
  options after `--` that would change it are refused, the FLOWER_* variables for them are
  overridden on Flower's command line (which wins over the environment), and Flower reads no
  `flowerconfig.py`.
- Read-only by default: revoking or sending tasks from Flower would bypass the job store
  (a revoked message leaves its job `queued` forever); `--allow-control` lifts it.
- The tasks page shows the columns that say what a job is (name, state, the args summary,
  retries, the exception) and Flower's `/metrics` also carries mpq's own figures.

No secret is on a command line: `--password` is refused, and Flower runs in this process
(`celery flower` with our app object) and gets the password as FLOWER_BASIC_AUTH in this
process's environment, which only its user can read.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import NoReturn

import typer

from core.network import is_loopback
from core.settings import Settings
from producer.cli_common import EXIT_USAGE, fail

GENERATED_PASSWORD_BYTES = 12
# What a user needs to tell jobs apart; Flower's default hides the args and the exception.
TASK_COLUMNS = "name,state,args,retries,exception,received,runtime,worker,uuid"
# Flower reads an option from FLOWER_<NAME> when the command line does not give it.
FLOWER_ENV_PREFIX = "FLOWER_"
BASIC_AUTH_ENV = "FLOWER_BASIC_AUTH"
# Flower options this module sets, or that would get past its checks: refused after `--`,
# each with what to do instead.
OWNED_OPTIONS: dict[str, str] = {
    "address": "use mpq flower --address",
    "port": "use mpq flower --port",
    "basic_auth": "set MPQ_FLOWER_USER and MPQ_FLOWER_PASSWORD (or --password-file)",
    "auth": "use --oauth-emails",
    "auth_provider": "use --oauth-provider",
    "oauth2_key": "set FLOWER_OAUTH2_KEY",
    "oauth2_secret": "set FLOWER_OAUTH2_SECRET",
    "oauth2_redirect_uri": "set FLOWER_OAUTH2_REDIRECT_URI",
    "cookie_secret": "set FLOWER_COOKIE_SECRET",
    "read_only": "use --allow-control",
    # Flower serves a unix socket to anyone (mode 0777) and a config file can set any option.
    "unix_socket": "mpq flower serves TCP only",
    "conf": "give the options after -- instead",
}
# --oauth-provider: Flower's login handlers, and what each needs in the environment.
OAUTH_PROVIDERS: dict[str, str] = {
    "github": "flower.views.auth.GithubLoginHandler",
    "gitlab": "flower.views.auth.GitLabLoginHandler",
    "google": "flower.views.auth.GoogleAuth2LoginHandler",
    "okta": "flower.views.auth.OktaLoginHandler",
}
OAUTH_ENV = ("FLOWER_OAUTH2_KEY", "FLOWER_OAUTH2_SECRET", "FLOWER_OAUTH2_REDIRECT_URI")
OAUTH_PROVIDER_ENV: dict[str, tuple[str, ...]] = {"okta": ("FLOWER_OAUTH2_OKTA_BASE_URL",)}


class UnsafeBindError(ValueError):
    """A Flower without a login on a non-loopback address, without `force_open`."""


class FlowerOptionsError(ValueError):
    """Options that would change Flower's address or login behind our checks, or a login
    that cannot be passed to Flower as given."""


@dataclasses.dataclass(frozen=True)
class OAuthLogin:
    """Single sign-on: `provider` (a key of OAUTH_PROVIDERS) says who someone is, `emails`
    (Flower's --auth pattern: `.*@example.com`, or `a@x.com|b@y.com`) who may come in."""

    provider: str
    emails: str

    @property
    def handler(self) -> str:
        return OAUTH_PROVIDERS[self.provider]


@dataclasses.dataclass(frozen=True)
class FlowerAccess:
    """Where Flower listens and who may log in (`user` None: no basic auth; `oauth`: single
    sign-on instead)."""

    address: str
    port: int
    user: str | None
    password: str | None
    generated_password: bool = False
    oauth: OAuthLogin | None = None
    tls: bool = False
    url_prefix: str = ""

    @property
    def auth(self) -> bool:
        return self.user is not None or self.oauth is not None

    @property
    def url(self) -> str:
        host = self.address or "0.0.0.0"  # noqa: S104 - only for display: '' binds everywhere
        prefix = self.url_prefix.strip("/")
        return (f"{'https' if self.tls else 'http'}://{f'[{host}]' if ':' in host else host}"
                f":{self.port}{f'/{prefix}/' if prefix else ''}")


def check_exposure(address: str, *, auth: bool, force_open: bool) -> None:
    if not auth and not force_open and not is_loopback(address):
        raise UnsafeBindError(
            f"refusing to serve Flower without auth on {address or 'every interface'}: "
            "keep basic auth on, use --oauth-provider, bind to 127.0.0.1, or pass --force-open"
        )


def user_options(extra_args: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The Flower options the user set, read as Flower reads them: FLOWER_<NAME> variables,
    then the arguments after `--` over them (any number of leading dashes, `-` or `_` in the
    name; a name without `=value` maps to ''). An argument naming one of OWNED_OPTIONS, in
    `--name=value` or `--name value` form, raises FlowerOptionsError."""
    found = {name[len(FLOWER_ENV_PREFIX):].lower(): value for name, value in environ.items()
             if name.startswith(FLOWER_ENV_PREFIX)}
    for arg in extra_args:
        if not arg.startswith("-"):
            continue  # a value: Flower drops it
        name, _, value = arg.lstrip("-").partition("=")
        key = name.replace("-", "_").lower()
        if key in OWNED_OPTIONS:
            raise FlowerOptionsError(f"{arg.partition('=')[0]} after --: {OWNED_OPTIONS[key]}")
        found[key] = value
    return found


def oauth_login(provider: str | None, emails: str | None,
                environ: Mapping[str, str]) -> OAuthLogin | None:
    """The single sign-on asked for, once it can work: a known provider, a valid pattern of
    emails, and the client id, secret and redirect URI in the environment."""
    if provider is None and emails is None:
        return None
    if provider not in OAUTH_PROVIDERS:
        raise FlowerOptionsError(f"{'--oauth-emails needs ' if provider is None else ''}"
                                 f"--oauth-provider: one of {', '.join(OAUTH_PROVIDERS)}")
    if not emails:
        raise FlowerOptionsError("--oauth-provider needs --oauth-emails: who may log in, "
                                 "e.g. '.*@example.com'")
    from flower.utils.authentication import validate_auth_option  # noqa: PLC0415

    if not validate_auth_option(emails):
        raise FlowerOptionsError(f"--oauth-emails {emails!r}: one '*' at most, not in the "
                                 "domain, and not with '|'")
    needed = (*OAUTH_ENV, *OAUTH_PROVIDER_ENV.get(provider, ()))
    missing = [name for name in needed if not environ.get(name)]
    if missing:
        raise FlowerOptionsError(f"--oauth-provider {provider} needs {', '.join(missing)} "
                                 "in the environment")
    return OAuthLogin(provider, emails)


def resolve_access(
    settings: Settings, *, address: str | None, port: int | None, user: str | None,
    password: str | None, auth: bool, oauth: OAuthLogin | None = None,
) -> FlowerAccess:
    """Options win over settings, settings over defaults; a missing password is generated.
    OAuth replaces basic auth."""
    bind = settings.flower_address if address is None else address
    bind_port = settings.flower_port if port is None else port
    if oauth is not None:
        if not auth:
            raise FlowerOptionsError("--no-auth and --oauth-provider: choose one")
        return FlowerAccess(bind, bind_port, None, None, oauth=oauth)
    if not auth:
        return FlowerAccess(bind, bind_port, None, None)
    login = user or settings.flower_user
    configured = settings.flower_password
    secret = password or (configured.get_secret_value() if configured else None)
    generated = not secret
    secret = secret or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    check_login(login, secret)
    return FlowerAccess(bind, bind_port, login, secret, generated_password=generated)


def check_login(user: str, password: str) -> None:
    """Flower splits FLOWER_BASIC_AUTH at commas into `user:password` pairs: a comma would
    make two logins of one, and a colon in the user name would move the split."""
    if "," in user or ":" in user or "," in password:
        raise FlowerOptionsError("Flower's login cannot hold a comma, nor the user name a "
                                 "colon: choose another (MPQ_FLOWER_USER, MPQ_FLOWER_PASSWORD)")


def with_user_options(access: FlowerAccess, options: Mapping[str, str]) -> FlowerAccess:
    """`access` as Flower will serve it: over TLS when given a certificate and key (as
    Flower decides), under `url_prefix`."""
    tls = bool(options.get("certfile") and options.get("keyfile"))
    return dataclasses.replace(access, tls=tls, url_prefix=options.get("url_prefix", ""))


def flower_argv(
    access: FlowerAccess, *, read_only: bool = True, extra_args: Sequence[str] = ()
) -> list[str]:
    """The `celery flower` arguments (extra_args last: they override ours, except the
    OWNED_OPTIONS, which they must not name). The basic-auth login is not here: see
    `flower_environment`."""
    oauth = access.oauth
    argv = [
        "flower",
        f"--address={access.address}",
        f"--port={access.port}",
        # Given even when empty: the command line wins over FLOWER_AUTH & co., and
        # /dev/null stands for the flowerconfig.py Flower would read from the cwd.
        f"--auth={oauth.emails if oauth else ''}",
        f"--auth_provider={oauth.handler if oauth else ''}",
        "--unix_socket=",
        f"--conf={os.devnull}",
        f"--tasks_columns={TASK_COLUMNS}",
        f"--read_only={read_only}",
        # Flower's own default, said aloud: it tells every worker to send task events
        # (off by default, MPQ_TASK_EVENTS) every 5 s while it runs.
        "--enable_events=True",
    ]
    return [*argv, *extra_args]


def flower_environment(access: FlowerAccess, environ: MutableMapping[str, str]) -> None:
    """Hand the basic-auth login to Flower in `environ` (this process's, in `run_flower`):
    unlike a command line, no other user can read it. Any FLOWER_BASIC_AUTH already there
    is replaced, or dropped without basic auth: the printed login is the real one."""
    if access.user is None:
        environ.pop(BASIC_AUTH_ENV, None)
    else:
        environ[BASIC_AUTH_ENV] = f"{access.user}:{access.password}"


def _login_lines(access: FlowerAccess) -> list[str]:
    # With port 0 the OS picks one: Flower's own "Visit me at" line names it.
    where = f"Flower {access.url}" if access.port else "Flower"
    if access.oauth is not None:
        lines = [f"{where}  login with {access.oauth.provider} as {access.oauth.emails}"]
    elif access.user is None:
        return [f"{where}  (no auth)"]
    else:
        lines = [f"{where}  user {access.user}"]
    if access.generated_password:
        lines.append(f"password {access.password}  (generated; set MPQ_FLOWER_PASSWORD to "
                     "choose one)")
    if not access.tls and not is_loopback(access.address):
        lines.append("warning: login over plain HTTP: put Flower behind TLS "
                     "(--certfile/--keyfile after --) or an SSH tunnel")
    return lines


def _register_mpq_metrics(settings: Settings) -> None:
    """Flower's `/metrics` serves the default registry: add mpq's figures to it (they live
    in the job store, so only when one is configured)."""
    if not settings.redis_url:
        return
    from prometheus_client import REGISTRY  # noqa: PLC0415 - only when Flower runs

    from producer.metrics_exporter import MpqCollector  # noqa: PLC0415

    REGISTRY.register(MpqCollector(settings))


def run_flower(
    settings: Settings,
    *,
    address: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    auth: bool = True,
    oauth: OAuthLogin | None = None,
    force_open: bool = False,
    read_only: bool = True,
    extra_args: Sequence[str] = (),
) -> NoReturn:
    """Run Flower in the foreground until SIGTERM or Ctrl-C, then end the process with
    Flower's exit code.

    Raises `FlowerOptionsError` or `UnsafeBindError` before anything starts."""
    access = with_user_options(
        resolve_access(settings, address=address, port=port, user=user, password=password,
                       auth=auth, oauth=oauth),
        user_options(extra_args, os.environ))
    check_exposure(access.address, auth=access.auth, force_open=force_open)
    for line in _login_lines(access):
        typer.echo(line)
    from core.celery_app import create_app  # noqa: PLC0415 - imports Celery

    _register_mpq_metrics(settings)
    celery = create_app(settings)
    # Flower reads queue lengths by broker type and never waits on BRPOP: kombu's own
    # transport (the workers' repaired one is for consumers, see core/internals/redis_broker.py).
    celery.conf.broker_transport = None
    flower_environment(access, os.environ)
    try:
        code = celery.start(flower_argv(access, read_only=read_only, extra_args=extra_args))
    except SystemExit as stopped:  # Flower's SIGTERM/SIGINT handler
        code = stopped.code
    # Flower has stopped serving. Leave now: interpreter shutdown would wait for Celery's
    # broker threads, which retry forever when the broker is gone (seen: no exit after 40 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0) if isinstance(code, int | None) else 1)


def read_password_file(path: Path) -> str:
    """The first line of `path`, without its line break."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0]:
        raise FlowerOptionsError(f"no password on the first line of {path}")
    return lines[0]


def flower_command(  # noqa: PLR0917 - typer: one parameter per option
    address: str | None = typer.Option(
        None, help="Address to bind (default: MPQ_FLOWER_ADDRESS or 127.0.0.1)."),
    port: int | None = typer.Option(
        None, min=0, help="Port (default: MPQ_FLOWER_PORT or 5555)."),
    user: str | None = typer.Option(None, help="Login (default: MPQ_FLOWER_USER or mpq)."),
    password_file: Path | None = typer.Option(
        None, help="File whose first line is the password (default: MPQ_FLOWER_PASSWORD; "
        "unset: generated and printed)."),
    password: str | None = typer.Option(None, hidden=True),
    auth: bool = typer.Option(True, help="Basic auth on the pages and the REST API."),
    oauth_provider: str | None = typer.Option(
        None, help=f"Single sign-on instead of basic auth: {', '.join(OAUTH_PROVIDERS)} "
        f"(client id, secret, redirect URI: {', '.join(OAUTH_ENV)})."),
    oauth_emails: str | None = typer.Option(
        None, help="Who may log in with --oauth-provider: '.*@example.com' or "
        "'a@x.com|b@y.com'."),
    force_open: bool = typer.Option(
        False, help="Allow no login (--no-auth) on a non-loopback address."),
    allow_control: bool = typer.Option(
        False, help="Let Flower revoke/send tasks and control workers (bypasses mpq cancel)."),
    extra_args: list[str] | None = typer.Argument(
        None, metavar="[-- FLOWER_OPTIONS]...",
        help="More Flower options after --, e.g. -- --persistent=True"),
) -> None:
    """Run Flower (Celery's monitor) on the configured broker: tasks, workers, queues."""
    if password is not None:
        fail("--password would show it to anyone who lists processes: set "
             "MPQ_FLOWER_PASSWORD or pass --password-file PATH", EXIT_USAGE)
    settings = Settings()
    if not (settings.broker_url or settings.redis_url):
        fail("no broker: set MPQ_REDIS_URL (or MPQ_BROKER_URL)", EXIT_USAGE)
    try:
        secret = read_password_file(password_file) if password_file else None
    except (OSError, FlowerOptionsError) as exc:
        fail(f"--password-file: {exc}", EXIT_USAGE)
    try:
        run_flower(settings, address=address, port=port, user=user, password=secret,
                   auth=auth, oauth=oauth_login(oauth_provider, oauth_emails, os.environ),
                   force_open=force_open, read_only=not allow_control,
                   extra_args=extra_args or ())
    except (FlowerOptionsError, UnsafeBindError) as exc:
        fail(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    typer.run(flower_command)
