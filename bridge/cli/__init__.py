"""The `hstream-bridge` command: `run`, `store`, and resource commands (streams, subscriptions,
tail).

`run` has one flag per setting (see bridge/settings.py); a flag given on the command line wins
over `HSTREAM_BRIDGE_<NAME>` in the environment, which wins over the `--config` TOML file.
"""

import os

# gRPC's C core logs TLS handshake failures and the like to stderr on its own; our error
# lines say what failed. Set before grpc is imported anywhere.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import functools
import gc
import logging
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bridge import __version__
from bridge.logs import redact_url  # errors quote URLs; their passwords stay out of stderr
from bridge.settings import ENV_PREFIX, ConfigFileError, Settings, load_settings

logger = logging.getLogger("bridge")

# The cyclic collector's thresholds (CPython's are 700, 10, 10). Each message makes a dozen
# GC-tracked objects (its delivery, future, callbacks, records) that live until it is stored,
# so with the default a young collection ran every ~60 messages and promoted them, and full
# passes over every message in flight followed. Measured side by side (bench.pipeline, 200,000
# telemetry messages, 2 cores): fan-out to 100 streams x 4 shards 17,642 -> 28,212 msg/s and
# 9.86 -> 5.31 CPU s; one stream 39,766 -> 43,463 msg/s; p99 at half the peak 11.0 -> 10.3 ms.
# The messages themselves make no cycles: garbage cycles wait at most 100,000 allocations.
GC_THRESHOLDS = (100_000, 20, 10)

_SKIP_FLAGS = {"rules", "sources"}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if name in _SKIP_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        annotation = field.annotation
        if annotation is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        choices = None
        if get_origin(annotation) is not None and all(
            isinstance(arg, str) for arg in get_args(annotation)
        ):
            choices = list(get_args(annotation))
        default = field.get_default(call_default_factory=True)
        parser.add_argument(
            flag,
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            metavar=None if choices else name.upper(),
            help=f"{help_text} (default: {default})",
        )


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: argparse otherwise takes any unambiguous prefix of a flag
    # (`--buffer` for `--buffer-bytes`), so a typo or a flag removed later silently binds to
    # another one. Subparsers do not inherit it: every `add_parser` passes it.
    parser = argparse.ArgumentParser(
        prog="hstream-bridge", description="MQTT to HStreamDB, at least once.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the bridge", allow_abbrev=False)
    run.add_argument("--config", type=Path, help="TOML file with settings and [[rules]]")
    _add_setting_flags(run)
    run.set_defaults(func=_run)

    from bridge.hstream.store.__main__ import add_arguments as add_store_arguments

    store = commands.add_parser(
        "store", help="run the embedded HStreamDB-API store on its own", allow_abbrev=False
    )
    add_store_arguments(store, data_dir_default=Path("./data/store"))
    store.set_defaults(func=functools.partial(_store, store))

    from bridge.cli.resources import add_resource_commands

    add_resource_commands(commands)
    return parser


def _settings_from_args(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {
        name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)
    }
    return load_settings(flags, args.config)


_SECRET_SETTINGS = frozenset(
    {"mqtt_password", "api_token", "cluster_secret", "cluster_secret_previous"}
)
"""Settings whose values are never quoted in an error."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _setting(name: str) -> str:
    """`--buffer-bytes (HSTREAM_BRIDGE_BUFFER_BYTES, buffer_bytes)`: the three ways to set it."""
    return f"{_flag(name)} ({ENV_PREFIX}{name.upper()}, {name})"


def _flags_named(message: str) -> str:
    """The setting names in a message (`buffer_bytes`) as their flags (`--buffer-bytes`)."""
    names = "|".join(sorted((re.escape(name) for name in Settings.model_fields), key=len)[::-1])
    return re.sub(rf"(?<![\w-])({names})(?![\w-])", lambda m: _flag(m.group(1)), message)


def _format_error(error: ErrorDetails) -> str:
    """One line: which setting (its flag, variable and TOML key) and what is wrong with it."""
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across settings: its message names them
        return _flags_named(message)
    name, rest = loc[0], loc[1:]
    if error["type"] == "extra_forbidden":  # flags and variables are known; only the file has these
        return f"{'.'.join(loc)} in the config file: not a setting"
    if name in ("rules", "sources"):
        return f"[[{name}]]{''.join(f'[{part}]' for part in rest)} in the config file: {message}"
    where = _setting(name) if name in Settings.model_fields else name
    if rest:
        where += " at " + ".".join(rest)
    value = error.get("input")
    if (
        error["type"] != "value_error"  # those quote what they refuse already
        and name not in _SECRET_SETTINGS
        and isinstance(value, str | int | float | bool)
    ):
        message += f" (got {str(value)[:80]!r})" if isinstance(value, str) else f" (got {value})"
    return f"{where}: {message}"


def _format_validation(exc: ValidationError) -> str:
    """What is wrong, naming each setting the way it was likely given: its flag first.

    `invalid setting --buffer-bytes (HSTREAM_BRIDGE_BUFFER_BYTES, buffer_bytes): Input should
    be a valid integer, ...` for one error; a header and one indented line each for several.
    """
    errors = exc.errors(include_url=False)
    lines = [_format_error(error) for error in errors]
    if len(lines) == 1:
        what = "setting" if errors[0]["loc"] else "settings:"  # one setting, or how they go
        return f"hstream-bridge: invalid {what} {lines[0]}"
    return "hstream-bridge: invalid settings:\n" + "\n".join(f"  {line}" for line in lines)


def _run(args: argparse.Namespace) -> int:
    from bridge.logs import setup_logging

    try:
        settings = _settings_from_args(args)
    except ValidationError as exc:
        print(redact_url(_format_validation(exc)), file=sys.stderr)
        return 2
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(settings.log_level, json=settings.log_json)
    return asyncio.run(_serve_bridge(settings))


async def _serve_bridge(settings: Settings) -> int:
    from bridge.hstream.errors import HStreamError
    from bridge.mqtt import ConnectRefused
    from bridge.service import Bridge, PipelineFailed
    from rules import RulesFileError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Bridge(settings) as bridge:
            # Everything made at start (modules, rules, clients) lives as long as the process:
            # keep it out of the cyclic collector's full passes, which otherwise show up as
            # latency spikes under load.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            await bridge.run(stop)
    except PipelineFailed as exc:
        # Logged where it happened; exit non-zero so the orchestrator restarts the bridge.
        print(f"hstream-bridge: {redact_url(str(exc))}", file=sys.stderr)
        return 1
    except (RulesFileError, ValueError, ConnectRefused, HStreamError, OSError) as exc:
        # A configuration problem (rules file, settings, credentials, an address in use or a
        # data dir that cannot be written): one clear line, no traceback.
        print(f"hstream-bridge: {redact_url(str(exc))}", file=sys.stderr)
        return 2
    logger.info("stopped")
    return 0


def _store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bridge.hstream.store.__main__ import run

    return run(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
