"""Resource commands: `streams`, `subscriptions` and `tail`, against any HStreamDB API server.

    hstream-bridge streams list
    hstream-bridge streams create temps --shards 4
    hstream-bridge subscriptions create temps_sub --stream temps --offset earliest
    hstream-bridge tail temps --from earliest --limit 10

Where: `--hstream-url` (or HSTREAM_BRIDGE_HSTREAM_URL); without it, the embedded store of the
`hstream-bridge run` whose `--data-dir` (default ./data) is given, found by the address it
leaves in DATA_DIR/store/address while it runs (bridge/store_address.py); else DEFAULT_URL.

Every subcommand sets `func`, a synchronous `(args) -> int` that runs its own event loop and
returns the exit code: 0 on success, 1 when HStreamDB refuses or cannot be reached (one line on
stderr naming the HStreamDB error code), 130 when interrupted. `main()` calls `args.func(args)`
and exits with the result.
"""

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bridge.hstream import HStreamClient, ReceivedRecord
from bridge.hstream.errors import HStreamError
from bridge.logs import redact_url
from bridge.store_address import address_path, read_address

DEFAULT_URL = "hstream://127.0.0.1:6570"
DEFAULT_DATA_DIR = "data"  # as `hstream-bridge run --data-dir`
ENV_PREFIX = "HSTREAM_BRIDGE_"

Handler = Callable[[HStreamClient, argparse.Namespace], Awaitable[int]]


def _connection_options() -> argparse.ArgumentParser:
    """Flags every resource command takes; defaults come from the bridge's environment."""
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parent.add_argument(
        "--hstream-url",
        default=os.environ.get(f"{ENV_PREFIX}HSTREAM_URL") or None,
        help="hstream://[user:pass@]host:port[,host:port] or hstreams:// (env "
        f"{ENV_PREFIX}HSTREAM_URL; default: the store of the `hstream-bridge run` using "
        f"--data-dir, else {DEFAULT_URL})",
    )
    parent.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(f"{ENV_PREFIX}DATA_DIR") or DEFAULT_DATA_DIR),
        help="the data dir of an `hstream-bridge run` with its embedded store: without "
        "--hstream-url, connect to that store (its address is in DATA_DIR/store/address while "
        f"it runs) (env {ENV_PREFIX}DATA_DIR, default ./{DEFAULT_DATA_DIR})",
    )
    for name, what in (("ca", "CA bundle"), ("cert", "client certificate"), ("key", "client key")):
        env = f"{ENV_PREFIX}HSTREAM_{name.upper()}_FILE"
        parent.add_argument(
            f"--hstream-{name}-file",
            type=Path,
            default=os.environ.get(env) or None,
            help=f"{what} for hstreams:// (env {env})",
        )
    parent.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    return parent


def add_resource_commands(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Add `streams`, `subscriptions` and `tail` to the `hstream-bridge` command."""
    common = _connection_options()

    streams = subparsers.add_parser(
        "streams", help="list, create and delete streams", allow_abbrev=False
    )
    stream_cmds = streams.add_subparsers(dest="streams_command", required=True, metavar="ACTION")
    cmd = stream_cmds.add_parser("list", parents=[common], help="list streams", allow_abbrev=False)
    cmd.set_defaults(func=_command(_streams_list))
    cmd = stream_cmds.add_parser(
        "create", parents=[common], help="create a stream", allow_abbrev=False
    )
    cmd.add_argument("name")
    cmd.add_argument("--shards", type=int, default=1, help="shard count (default 1)")
    cmd.add_argument("--replication", type=int, default=1, help="replication factor (default 1)")
    cmd.add_argument("--backlog", type=int, default=0, help="retention in seconds (0: default)")
    cmd.set_defaults(func=_command(_streams_create))
    cmd = stream_cmds.add_parser(
        "delete", parents=[common], help="delete a stream", allow_abbrev=False
    )
    cmd.add_argument("name")
    cmd.add_argument("--force", action="store_true", help="even if it has subscriptions")
    cmd.set_defaults(func=_command(_streams_delete))

    subs = subparsers.add_parser(
        "subscriptions", help="list, create and delete subscriptions", allow_abbrev=False
    )
    sub_cmds = subs.add_subparsers(dest="subscriptions_command", required=True, metavar="ACTION")
    cmd = sub_cmds.add_parser(
        "list", parents=[common], help="list subscriptions", allow_abbrev=False
    )
    cmd.set_defaults(func=_command(_subscriptions_list))
    cmd = sub_cmds.add_parser(
        "create", parents=[common], help="create a subscription", allow_abbrev=False
    )
    cmd.add_argument("id")
    cmd.add_argument("--stream", required=True, help="the stream to subscribe to")
    cmd.add_argument("--offset", choices=["earliest", "latest"], default="earliest")
    cmd.add_argument("--ack-timeout", type=float, default=60.0, help="seconds (default 60)")
    cmd.add_argument("--max-unacked", type=int, default=10_000, help="default 10000")
    cmd.set_defaults(func=_command(_subscriptions_create))
    cmd = sub_cmds.add_parser(
        "delete", parents=[common], help="delete a subscription", allow_abbrev=False
    )
    cmd.add_argument("id")
    cmd.add_argument("--force", action="store_true", help="even if consumers are attached")
    cmd.set_defaults(func=_command(_subscriptions_delete))

    tail = subparsers.add_parser(
        "tail",
        parents=[common],
        help="print a stream's records, one line each",
        allow_abbrev=False,
    )
    tail.add_argument("stream")
    tail.add_argument("--from", dest="offset", choices=["earliest", "latest"], default="earliest")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--limit", "-n", type=int, default=None, help="stop after N records")
    tail.set_defaults(func=_command(_tail))


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_with_client(handler, args))
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # `tail ... | head`
            sys.stderr.close()
            return 0

    run.__name__ = handler.__name__
    return run


def resolve_url(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The HStreamDB URL to use, and the address file it came from (None when it did not).

    --hstream-url (or its variable) wins; else the address an `hstream-bridge run` with its
    embedded store left in DATA_DIR/store/address; else DEFAULT_URL.
    """
    if args.hstream_url:
        return args.hstream_url, None
    url = read_address(args.data_dir)
    if url is not None:
        return url, address_path(args.data_dir)
    return DEFAULT_URL, None


async def _with_client(handler: Handler, args: argparse.Namespace) -> int:
    url, source = resolve_url(args)
    try:
        client = HStreamClient(
            url,
            ca_file=args.hstream_ca_file,
            cert_file=args.hstream_cert_file,
            key_file=args.hstream_key_file,
            timeout=args.timeout,
        )
        async with client:
            return await handler(client, args)
    except HStreamError as exc:
        hint = ""
        if source is not None and exc.retriable:  # a bridge killed with -9 leaves it behind
            hint = f" ({url} is from {source}: is the `hstream-bridge run` that wrote it running?)"
        print(f"error: {describe_error(exc)}{hint}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {redact_url(str(exc))}", file=sys.stderr)  # it may quote the URL
        return 1


def describe_error(exc: HStreamError) -> str:
    """One line: what failed, the HStreamDB code and the error class."""
    code = "no code" if exc.code is None else f"code {exc.code}"
    return f"{exc.message} (HStreamDB {code}, {type(exc).__name__})"


async def _streams_list(client: HStreamClient, args: argparse.Namespace) -> int:
    rows = [
        (s.name, str(s.shard_count), str(s.replication_factor), str(s.backlog_seconds))
        for s in await client.list_streams()
    ]
    _table(("STREAM", "SHARDS", "REPLICATION", "BACKLOG_S"), rows)
    return 0


async def _streams_create(client: HStreamClient, args: argparse.Namespace) -> int:
    info = await client.create_stream(
        args.name,
        shard_count=args.shards,
        replication_factor=args.replication,
        backlog_seconds=args.backlog,
    )
    print(f"created stream {info.name} ({info.shard_count} shards)")
    return 0


async def _streams_delete(client: HStreamClient, args: argparse.Namespace) -> int:
    await client.delete_stream(args.name, force=args.force)
    print(f"deleted stream {args.name}")
    return 0


async def _subscriptions_list(client: HStreamClient, args: argparse.Namespace) -> int:
    rows = [
        (s.id, s.stream, s.offset, f"{s.ack_timeout:g}", str(s.max_unacked))
        for s in await client.list_subscriptions()
    ]
    _table(("SUBSCRIPTION", "STREAM", "OFFSET", "ACK_TIMEOUT_S", "MAX_UNACKED"), rows)
    return 0


async def _subscriptions_create(client: HStreamClient, args: argparse.Namespace) -> int:
    info = await client.create_subscription(
        args.id,
        args.stream,
        ack_timeout=args.ack_timeout,
        max_unacked=args.max_unacked,
        offset=args.offset,
    )
    print(f"created subscription {info.id} on {info.stream}")
    return 0


async def _subscriptions_delete(client: HStreamClient, args: argparse.Namespace) -> int:
    await client.delete_subscription(args.id, force=args.force)
    print(f"deleted subscription {args.id}")
    return 0


async def _tail(client: HStreamClient, args: argparse.Namespace) -> int:
    reader = client.read_stream(
        args.stream, offset=args.offset, follow=args.follow, limit=args.limit
    )
    async with reader:
        async for record in reader:
            print(format_record(record), flush=args.follow)
    return 0


def format_record(record: ReceivedRecord) -> str:
    """`id<TAB>key<TAB>attributes as JSON<TAB>payload` (JSON records as JSON, RAW as text)."""
    if isinstance(record.payload, dict):
        payload = json.dumps(record.payload, ensure_ascii=False, sort_keys=True)
    else:
        payload = record.payload.decode("utf-8", errors="backslashreplace")
    attributes = json.dumps(record.attributes, ensure_ascii=False, sort_keys=True)
    return f"{record.id}\t{record.key}\t{attributes}\t{payload}"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
