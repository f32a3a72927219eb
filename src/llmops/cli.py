"""`llmops serve | models | keys | prompts | config check | eval`."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmops.errors import ConfigError, LLMOpsError
from llmops.eval.cli import add_eval_parser, cmd_eval
from llmops.settings import Settings, StateSettings, load_settings

if TYPE_CHECKING:
    from llmops.stores.keys import KeyStore


STORE_HELP = """where keys and spend live: the state store. By default a per-user SQLite file,
~/.local/share/llmops/llmops.db (state.sqlite_path; env LLMOPS_STATE__SQLITE_PATH), shared by every
`llmops serve` of this user that does not name another; with state.backend redis, in Redis
(state.redis_url). --store PATH (a SQLite file) or --store redis://HOST:PORT/DB picks another one.
--config and --store are accepted before or after any subcommand."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmops", description="OpenAI-compatible LLM and image serving.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the configured models, the web console (/console) and the API "
                           "docs (/docs)")
    serve.add_argument("--host", help="address to bind (env LLMOPS_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (env LLMOPS_PORT; default 8000)")
    serve.add_argument("--insecure-no-auth", action="store_true", default=None,
                       help="allow binding a non-loopback address with no API keys")
    models = sub.add_parser("models", help="list the configured models, or build a tiny embedded model")
    models_sub = models.add_subparsers(dest="models_command")
    models_sub.add_parser("list", help="list the configured models (the default)")
    tiny = models_sub.add_parser("build-tiny-sd", help="build the tiny Stable Diffusion pipeline (random weights)")
    tiny.add_argument("dir", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed; the same seed gives identical files")
    resnet = models_sub.add_parser("build-tiny-resnet", help="train the tiny digits ResNet (seconds on a CPU)")
    resnet.add_argument("dir", help="output folder")
    resnet.add_argument("--seed", type=int, default=0, help="training seed; the same seed gives identical files")
    keys = sub.add_parser("keys", help="manage API keys in the state store (the first key makes the servers "
                          "using that store require keys)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--name", required=True, type=_text(1, 128), help="1 to 128 characters")
    create.add_argument("--models", default="", help="comma-separated models it may use (default: all): "
                        "models or routes the config serves")
    create.add_argument("--priority", choices=["interactive", "batch"], default="interactive")
    create.add_argument("--rpm", type=_count(), default=None, help="requests per minute, at least 1 (default: no "
                        "limit)")
    create.add_argument("--tpm", type=_count(), default=None, help="tokens per minute, at least 1 (default: no limit)")
    create.add_argument("--max-concurrent", type=_count(), default=None, help="requests in flight, at least 1 "
                        "(default: no limit)")
    create.add_argument("--budget", type=_dollars(), default=None, help="dollars per budget period, 0 or more "
                        "(default: none)")
    create.add_argument("--budget-period", choices=["day", "week", "month", "total"], default="month")
    create.add_argument("--secret-only", action="store_true", help="print only the secret (for scripts)")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    for verb in ("show", "revoke"):
        keys_sub.add_parser(verb, help=f"{verb} a key").add_argument("id")
    prompts = sub.add_parser("prompts", help="versioned prompt templates")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    publish = prompts_sub.add_parser("publish", help="record new versions in DIR/published.json (published "
                                     "versions may never change)")
    publish.add_argument("dir", help="the prompts folder: <id>/<version>.yaml")
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("check", help="validate a config file and every engine's options")
    add_eval_parser(sub)
    _uniform(p)  # last: every (sub)command, whoever added it, takes --config and --store and says where keys live
    return p


# `keys create` takes what POST /admin/keys takes (api/admin.py's KeyCreate, which this package may not import:
# docs/architecture.md); tests/unit/test_key_bounds.py checks that both refuse exactly the same values. A value
# out of bounds is a usage error (exit status 2) naming its option, before any store is opened.
def _count(least: int = 1) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, at least {least}; got {raw!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}; got {value}")
        return value
    parse.__name__ = "count"
    return parse


def _dollars(least: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of dollars, {least:g} or more; got {raw!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of dollars; got {raw!r}")
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least:g} or more; got {raw!r}")
        return value
    parse.__name__ = "dollars"
    return parse


def _text(shortest: int, longest: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not shortest <= len(raw) <= longest:
            raise argparse.ArgumentTypeError(f"must be {shortest} to {longest} characters; got {len(raw)}")
        return raw
    parse.__name__ = "text"
    return parse


def _models_option(raw: str) -> tuple[str, ...]:
    """`keys create --models a,b`: the names, each once, in order ("" and empty items: none, every model)."""
    return tuple(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip()))


COMMON = {"--config": "YAML config file (default: the embedded models)",
          "--store": "the state store holding keys and spend: a SQLite file or a redis:// URL (default: the "
                     "config's state section; see below)"}


def _uniform(parser: argparse.ArgumentParser) -> None:
    """Every parser in the tree lists --config and --store and ends its help with where keys and spend live.
    Their values are taken out of the command line before parsing (`_hoist`), so they mean the same at every
    level, before or after any subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                child.description = child.description or helps.get(name)
                _uniform(child)
    for flag, text in COMMON.items():
        if flag not in parser._option_string_actions:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=text,
                                metavar="PATH|URL" if flag == "--store" else "FILE")
    parser.epilog = STORE_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _hoist(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Take `--config X` / `--store X` (or `--config=X`) out of `argv`, wherever they stand."""
    rest: list[str] = []
    found: dict[str, str] = {}
    tokens = iter(argv)
    for token in tokens:
        name, eq, value = token.partition("=")
        if name not in COMMON or token == "--":
            rest.append(token)
            continue
        given = value if eq else next(tokens, None)
        if given is None:
            rest.append(token)  # argparse says that it needs a value
        else:
            found[name[2:]] = given
    return rest, found


def _store_override(store: str | None) -> dict[str, str] | None:
    if not store:
        return None
    if store.startswith(("redis://", "rediss://", "unix://")):
        return {"backend": "redis", "redis_url": store}
    return {"backend": "sqlite", "sqlite_path": store}


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None), host=getattr(args, "host", None),
                         port=getattr(args, "port", None), insecure_no_auth=getattr(args, "insecure_no_auth", None),
                         state=_store_override(getattr(args, "store", None)))


def store_location(settings: Settings) -> str:
    """Where keys and spend live, in words."""
    st = settings.state
    if st.backend == "sqlite":
        return f"the SQLite file {Path(st.sqlite_path).expanduser()}"
    if st.backend == "redis":
        from llmops.engines.upstream import shown_url  # the URL without its user, password or query
        return f"Redis at {shown_url(st.redis_url)} (prefix {st.redis_prefix})"
    return "memory (nothing is kept)"


def _check_engines(settings: Settings) -> None:
    from llmops.engines.registry import parse_options

    for i, m in enumerate(settings.models):
        parse_options(m.engine, m.options, f"models[{i}]")


def cmd_serve(args: argparse.Namespace) -> int:
    from llmops.observability.logging import configure_logging
    from llmops.server import serve

    settings = _load(args)
    configure_logging(settings.log_level, settings.observability.log_format, secrets=settings.secret_values(),
                      flush_s=settings.observability.log_flush_ms / 1000)
    serve(settings)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import asyncio

    from llmops.stores import build_state
    from llmops.stores.keys import unserved

    settings = _load(args)
    if args.keys_command == "create":
        served = [m.name for m in settings.models] + [r.name for r in settings.routes]
        unknown = unserved(_models_option(args.models), served)
        if unknown:  # a usage error, as for the bounds, before any store is opened
            where = f"the config {args.config}" if getattr(args, "config", None) else "the default config"
            print(f"llmops keys create: error: argument --models: {where} serves no model named "
                  f"{', '.join(map(repr, unknown))} (it serves {', '.join(served) or 'none'}; give the server's "
                  "--config, or leave --models out to allow every model)", file=sys.stderr)
            return 2

    async def run() -> None:
        state = build_state(settings.state)
        try:
            first = args.keys_command == "create" and await state.keys.key_count() == 0
            await _keys_command(args, state.keys)
        finally:
            await state.close()
        if first:
            print(_first_key_warning(settings), file=sys.stderr)

    asyncio.run(run())
    return 0


def _first_key_warning(settings: Settings) -> str:
    default = StateSettings.model_fields["sqlite_path"].default
    shared = settings.state.backend == "sqlite" and settings.state.sqlite_path == default
    who = "Every server using this store (the default `llmops serve` and `make serve` of this user included)" \
        if shared else "Every server using this store"
    return (f"warning: this is the first key in {store_location(settings)}. {who} now requires an API key on "
            "every request, and revoking the keys does not reopen it. Use --store (or state.sqlite_path) for a "
            "store of its own.")


async def _keys_command(args: argparse.Namespace, store: KeyStore) -> None:
    import json

    from llmops.stores.keys import KeyLimits, new_key

    if args.keys_command == "create":
        models = _models_option(args.models)
        limits = KeyLimits(args.rpm, args.tpm, args.max_concurrent, args.budget, args.budget_period)
        key, secret = new_key(args.name, models, args.priority, limits)
        await store.add(key)
        print(secret if args.secret_only else json.dumps({**key.public(), "secret": secret}, indent=2))
        print(f"created {key.id}: store the secret now, it is not kept and cannot be shown again", file=sys.stderr)
    elif args.keys_command == "list":
        keys = await store.all()
        if not keys:
            print("no keys: servers using this store are open on loopback", file=sys.stderr)
        for key in keys:
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}\t{key.name}\t{key.display}\t{state}\t{','.join(key.models) or '*'}\t{key.priority}")
    else:
        key = await (store.revoke(args.id) if args.keys_command == "revoke" else store.get(args.id))
        print(json.dumps(key.public(), indent=2))


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "build-tiny-sd":
        from llmops.engines.tiny_sd import build_tiny_sd

        print(f"built {build_tiny_sd(args.dir, seed=args.seed)}")
        return 0
    if args.models_command == "build-tiny-resnet":
        from llmops.engines.tiny_resnet import build_tiny_resnet, read_metadata

        out = build_tiny_resnet(args.dir, seed=args.seed)
        print(f"built {out}: held-out accuracy {read_metadata(out)['held_out_accuracy']:.4f}")
        return 0
    settings = _load(args)
    for m in settings.models:
        print(f"{m.name}\t{m.kind}\t{m.engine}\t{m.options}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from llmops.prompts.registry import publish

    added = publish(Path(args.dir))
    print("\n".join(f"published {name}" for name in added) or "nothing new to publish")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from llmops.observability.metrics import Metrics
    from llmops.pipeline.guardrails import Guardrails
    from llmops.prompts.registry import PromptRegistry

    settings = _load(args)
    _check_engines(settings)
    Guardrails(settings.guardrails, Metrics())  # classifiers import
    PromptRegistry(settings.prompts.dir)  # published prompts unchanged
    print(f"config ok: {len(settings.models)} model(s) on {settings.host}:{settings.port}")
    for m in settings.models:
        print(f"  {m.name} ({m.kind}, engine {m.engine})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    rest, common = _hoist(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(rest)
    for name, value in common.items():
        setattr(args, name, value)
    handlers = {"serve": cmd_serve, "models": cmd_models, "config": cmd_config_check, "keys": cmd_keys,
                "prompts": cmd_prompts, "eval": cmd_eval}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"llmops: {exc.message}", file=sys.stderr)
        return 2
    except LLMOpsError as exc:
        print(f"llmops: {exc.message}", file=sys.stderr)
        return 1
