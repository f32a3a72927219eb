"""`llmops serve | models | keys | prompts | config check`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmops.errors import ConfigError, LLMOpsError
from llmops.settings import Settings, load_settings

if TYPE_CHECKING:
    from llmops.stores.keys import KeyStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmops", description="OpenAI-compatible LLM and image serving.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the configured models")
    serve.add_argument("--config", help="YAML config file (default: the embedded Gemma model)")
    serve.add_argument("--host", help="address to bind (env LLMOPS_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (env LLMOPS_PORT; default 8000)")
    serve.add_argument("--insecure-no-auth", action="store_true", default=None,
                       help="allow binding a non-loopback address with no API keys")
    models = sub.add_parser("models", help="list the configured models, or build a tiny embedded model")
    models.add_argument("--config")
    models_sub = models.add_subparsers(dest="models_command")
    models_sub.add_parser("list", help="list the configured models (the default)").add_argument("--config")
    tiny = models_sub.add_parser("build-tiny-sd", help="build the tiny Stable Diffusion pipeline (random weights)")
    tiny.add_argument("dir", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed; the same seed gives identical files")
    resnet = models_sub.add_parser("build-tiny-resnet", help="train the tiny digits ResNet (seconds on a CPU)")
    resnet.add_argument("dir", help="output folder")
    resnet.add_argument("--seed", type=int, default=0, help="training seed; the same seed gives identical files")
    keys = sub.add_parser("keys", help="manage API keys in the configured store")
    keys.add_argument("--config")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--models", default="", help="comma-separated models it may use (default: all)")
    create.add_argument("--priority", choices=["interactive", "batch"], default="interactive")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute (default: no limit)")
    create.add_argument("--max-concurrent", type=int, default=None, help="requests in flight (default: no limit)")
    create.add_argument("--budget", type=float, default=None, help="dollars per budget period (default: none)")
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
    check = config_sub.add_parser("check", help="validate a config file and every engine's options")
    check.add_argument("--config")
    return p


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, host=getattr(args, "host", None), port=getattr(args, "port", None),
                         insecure_no_auth=getattr(args, "insecure_no_auth", None))


def _check_engines(settings: Settings) -> None:
    from llmops.engines.registry import parse_options

    for i, m in enumerate(settings.models):
        parse_options(m.engine, m.options, f"models[{i}]")


def cmd_serve(args: argparse.Namespace) -> int:
    from llmops.observability.logging import configure_logging
    from llmops.server import serve

    settings = _load(args)
    configure_logging(settings.log_level, settings.observability.log_format)
    serve(settings)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import asyncio

    from llmops.stores import build_state

    settings = _load(args)

    async def run() -> None:
        state = build_state(settings.state)
        try:
            await _keys_command(args, state.keys)
        finally:
            await state.close()

    asyncio.run(run())
    return 0


async def _keys_command(args: argparse.Namespace, store: KeyStore) -> None:
    import json

    from llmops.stores.keys import KeyLimits, new_key

    if args.keys_command == "create":
        models = tuple(m for m in args.models.split(",") if m)
        limits = KeyLimits(args.rpm, args.tpm, args.max_concurrent, args.budget, args.budget_period)
        key, secret = new_key(args.name, models, args.priority, limits)
        await store.add(key)
        print(secret if args.secret_only else json.dumps({**key.public(), "secret": secret}, indent=2))
        print(f"created {key.id}: store the secret now, it is not kept and cannot be shown again", file=sys.stderr)
    elif args.keys_command == "list":
        for key in await store.all():
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
    from pathlib import Path

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
    args = _parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "models": cmd_models, "config": cmd_config_check, "keys": cmd_keys,
                "prompts": cmd_prompts}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"llmops: {exc.message}", file=sys.stderr)
        return 2
    except LLMOpsError as exc:
        print(f"llmops: {exc.message}", file=sys.stderr)
        return 1
