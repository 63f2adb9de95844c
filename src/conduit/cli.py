"""The `conduit` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from conduit.cli_guards import guards_app
from conduit.cli_rag import index_app, ingest
from conduit.config import Settings

app = typer.Typer(help="Conduit: an OpenAI-compatible LLM gateway with an embedded engine.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke tenants' API keys.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(index_app, name="index")
app.add_typer(guards_app, name="guards")
app.command()(ingest)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # a bad config file or variable: say which, no traceback
        err.print(f"[red]Invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config: 8000).")] = None,
) -> None:
    """Start the HTTP server."""
    import uvicorn

    from conduit.api.app import create_app
    from conduit.gateway.auth import ensure_admin_key

    settings = _settings()
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    logging.basicConfig(level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every upstream request at INFO: the request log already has them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _, key_file = ensure_admin_key(
        settings.admin_key.get_secret_value() if settings.admin_key else None, settings.data_dir
    )
    _print_welcome(settings, key_file)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=settings.server.access_log,
        timeout_graceful_shutdown=int(settings.server.drain_timeout_s),
    )


def _print_welcome(settings: Settings, key_file: os.PathLike | None) -> None:
    url = f"http://{settings.server.host}:{settings.server.port}"
    model = settings.models[0].name
    where = f"in {key_file}" if key_file else "from your configuration (CONDUIT_ADMIN_KEY)"
    key_expr = f"$(cat {key_file})" if key_file else "$CONDUIT_ADMIN_KEY"
    console.print(f"[bold]Conduit[/bold] on {url} — the admin key is {where}", highlight=False)
    console.print("Try it (once /readyz says ready):", highlight=False)
    console.print(
        f"  curl {url}/v1/chat/completions -H \"Authorization: Bearer {key_expr}\" "
        f"-H 'Content-Type: application/json' "
        f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
        highlight=False, soft_wrap=True,
    )
    py_key = f"open('{key_file}').read().strip()" if key_file else "os.environ['CONDUIT_ADMIN_KEY']"
    console.print(
        f"  python -c \"import os; from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key={py_key}); "
        f"print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)\"",
        highlight=False, soft_wrap=True,
    )
    console.print(f"Dashboard: {url}/ui (sign in with the admin key); metrics: {url}/metrics", highlight=False)


def _client(base_url: str, api_key: str | None):
    from openai import OpenAI

    from conduit.gateway.auth import ADMIN_KEY_FILE

    settings = _settings()
    if api_key is None:
        key_file = settings.data_dir / ADMIN_KEY_FILE
        if settings.admin_key is not None:
            api_key = settings.admin_key.get_secret_value()
        elif key_file.exists():
            api_key = key_file.read_text().strip()
        else:
            err.print("[red]No API key:[/red] pass --api-key or set CONDUIT_API_KEY.")
            raise typer.Exit(2)
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


BaseUrl = Annotated[str, typer.Option(envvar="CONDUIT_BASE_URL", help="The server's OpenAI base URL.")]
ApiKey = Annotated[str | None, typer.Option(envvar="CONDUIT_API_KEY", help="Default: the admin key.")]


@app.command()
def chat(
    model: Annotated[str | None, typer.Option(help="Model id (default: the first configured).")] = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    base_url: BaseUrl = "http://127.0.0.1:8000/v1",
    api_key: ApiKey = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
) -> None:
    """Chat with a model in the terminal, streaming the answers. Ctrl-D or /exit to leave."""
    import openai

    client = _client(base_url, api_key)
    model = model or _settings().models[0].name
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    console.print(f"Chatting with [bold]{model}[/bold] at {base_url}. Ctrl-D or /exit to leave.", highlight=False)
    while True:
        try:
            line = console.input("[bold green]you>[/bold green] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        answer: list[str] = []
        try:
            stream = client.chat.completions.create(model=model, messages=history, stream=True, max_tokens=max_tokens)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    answer.append(chunk.choices[0].delta.content)
                    sys.stdout.write(chunk.choices[0].delta.content)
                    sys.stdout.flush()
        except openai.APIError as exc:
            err.print(f"\n[red]error:[/red] {exc}")
            history.pop()
            continue
        except KeyboardInterrupt:
            pass
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})


@app.command()
def models(base_url: BaseUrl = "http://127.0.0.1:8000/v1", api_key: ApiKey = None) -> None:
    """List the models the server offers to this key."""
    import openai

    try:
        for model in _client(base_url, api_key).models.list():
            console.print(model.id, highlight=False)
    except openai.APIConnectionError:
        err.print(f"[red]Cannot reach[/red] {base_url}; is `conduit serve` running?")
        raise typer.Exit(1) from None


def _key_store():
    from conduit.store.db import Database
    from conduit.store.keys import KeyStore

    db = Database(_settings().resolved_database_url)
    db.migrate()
    return KeyStore(db)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to (created if new).")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires: Annotated[str | None, typer.Option(help="Expiry: YYYY-MM-DD or an ISO date-time.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute, at most.", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute, at most.", min=1)] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Requests in flight at once, at most.", min=1)] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Dollars per budget period, at most.", min=0.0)] = None,
    budget_period: Annotated[str, typer.Option(help="day | week | month (UTC).")] = "month",
) -> None:
    """Create a key. Its secret is printed once and stored only as a hash."""
    from pydantic import ValidationError

    from conduit.config import Budget, Limits
    from conduit.store.keys import parse_expiry

    try:
        budget = Budget(usd=budget_usd, period=budget_period) if budget_usd else None  # type: ignore[arg-type]
        limits = Limits(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent)
        key, secret = _key_store().create(tenant, name, parse_expiry(expires) if expires else None, limits, budget)
    except ValidationError as exc:
        err.print(f"[red]error:[/red] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"Created {key.id} for tenant '{key.tenant}'. Store the key now; it is not shown again:")
    print(secret)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List keys (never their secrets)."""
    from conduit.api.routes.admin import key_json

    keys = _key_store().list(tenant)
    if as_json:
        print(json.dumps([key_json(k) for k in keys], indent=2))
        return
    table = Table("id", "tenant", "name", "hint", "status", "created", "expires")
    for k in keys:
        table.add_row(k.id, k.tenant, k.name or "", f"...{k.hint}", k.status, f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "never")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke a key. A running server stops accepting it within gateway.key_cache_ttl_s."""
    from conduit.store.keys import KeyNotFound

    try:
        key = _key_store().revoke(key_id)
    except KeyNotFound:
        err.print(f"[red]error:[/red] no key with id {key_id}")
        raise typer.Exit(1) from None
    console.print(f"Revoked {key.id} (tenant '{key.tenant}').", highlight=False)


@app.command("usage")
def usage_report(
    group_by: Annotated[str, typer.Option(help="Comma-separated: tenant, key, model, day.")] = "tenant,model,day",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    since: Annotated[str | None, typer.Option(help="From this ISO date or date-time on.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Requests, tokens and cost from the request log."""
    from datetime import datetime

    from sqlalchemy import select

    from conduit.store.db import Database
    from conduit.store.tables import Tenant
    from conduit.store.usage import usage

    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    if not groups or any(g not in ("tenant", "key", "model", "day") for g in groups):
        err.print("[red]error:[/red] --group-by takes tenant, key, model, day")
        raise typer.Exit(2)
    try:
        start = datetime.fromisoformat(since) if since else None
    except ValueError:
        err.print(f"[red]error:[/red] '{since}' is not an ISO date")
        raise typer.Exit(2) from None
    db = Database(_settings().resolved_database_url)
    db.migrate()
    tenant_id = None
    if tenant is not None:
        with db.session() as session:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
        if tenant_id is None:
            err.print(f"[red]error:[/red] no tenant named '{tenant}'")
            raise typer.Exit(1)
    rows = usage(db, groups, tenant_id, start)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps([{**r.group, "requests": r.requests, "prompt_tokens": r.prompt_tokens,
                           "completion_tokens": r.completion_tokens, "cost_usd": r.cost_usd} for r in rows], indent=2))
        return
    table = Table(*groups, "requests", "prompt tokens", "completion tokens", "cost $")
    for r in rows:
        table.add_row(*(r.group[g] or "" for g in groups), str(r.requests), str(r.prompt_tokens),
                      str(r.completion_tokens), f"{r.cost_usd:.6f}")
    console.print(table)


@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration (file + environment + defaults), secrets masked."""
    import yaml

    print(yaml.safe_dump(_settings().redacted(), sort_keys=False), end="")


if __name__ == "__main__":
    app()
