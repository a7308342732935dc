"""Command line: `lcm-bot` runs the Discord bot, `lcm-bot sync` registers its commands, and `lcm-bot imagine` and
`lcm-bot doctor` work without Discord.

Start-up problems (bad settings, missing weights, a rejected token) end the process with one readable line and
a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from bot import log_context
from bot.doctor import run_checks
from bot.engine.pipelines import ModelUnavailable
from bot.engine.requests import ASPECTS_AT_1024, Kind, check_inputs
from bot.engine.service import open_engine
from bot.errors import UserFacingError
from bot.settings import Settings, describe_invalid

log = logging.getLogger("bot")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"lcm-bot: {describe_invalid(exc)}", file=sys.stderr)
        return 2
    log_context.install(settings.log_level)
    try:
        if args.command == "imagine":
            return asyncio.run(_imagine(settings, args))
        if args.command == "doctor":
            return _doctor(settings)
        if args.command == "worker":
            return _worker(settings)
        from bot.app import run_bot, sync_commands  # imported late: the commands above need no Discord code

        if args.command == "sync":
            return sync_commands(settings, args.guild)
        return run_bot(settings)
    except (ModelUnavailable, UserFacingError) as exc:
        print(f"lcm-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcm-bot", description="LCM SSD-1B image bot for Discord.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the Discord bot (the default)")
    commands.add_parser("doctor", help="check settings, GPU, weights, compile cache, database and token")
    commands.add_parser("worker", help="serve generation tasks from REDIS_URL (QUEUE_BACKEND=redis scale-out)")
    sync = commands.add_parser("sync", help="register the slash commands with Discord (globally by default)")
    sync.add_argument("--guild", type=int, help="register in this guild only (instant, for testing)")
    imagine = commands.add_parser("imagine", help="generate images locally, without Discord")
    imagine.add_argument("prompt")
    imagine.add_argument("--negative")
    imagine.add_argument("--aspect", choices=list(ASPECTS_AT_1024), default="1:1")
    imagine.add_argument("--steps", type=int)
    imagine.add_argument("--guidance", type=float)
    imagine.add_argument("--seed", type=int)
    imagine.add_argument("--count", type=int, default=1)
    imagine.add_argument("-o", "--output", type=Path, default=Path("out"))
    return parser


async def _imagine(settings: Settings, args: argparse.Namespace) -> int:
    async with open_engine(settings, drain_on_close=True) as engine:
        request = check_inputs(
            Kind.IMAGINE,
            args.prompt,
            buckets=engine.buckets,
            negative=args.negative,
            aspect=args.aspect,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            count=args.count,
            count_tokens=engine.rules.count_tokens,
            negative_has_effect=engine.rules.negative_has_effect(args.guidance or 1.0),
        )
        for notice in request.notices:
            print(f"note: {notice}")
        result = await engine.executor.submit(request, user_id="cli").result()
    args.output.mkdir(parents=True, exist_ok=True)
    for seed, png in zip(result.seeds, result.images, strict=True):
        path = args.output / f"{seed}.png"
        path.write_bytes(png)
        print(path)
    print(f"{len(result.images)} image(s) in {result.generation_time:.2f} s")
    return 0


def _doctor(settings: Settings) -> int:
    checks = run_checks(settings)
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    return 0 if all(check.ok for check in checks) else 1


def _worker(settings: Settings) -> int:
    try:
        from bot.queue.worker import run_worker
    except ImportError as exc:
        print(
            f"lcm-bot: the worker needs the scale-out extra: pip install 'lcm-bot[scale-out]' ({exc})", file=sys.stderr
        )
        return 2
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
