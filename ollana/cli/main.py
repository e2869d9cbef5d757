"""The command line: parse once, build a frozen Config, run the node (foreground or daemon)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import structlog

from ollana import __version__
from ollana import log as logconf
from ollana.cli import nodeops
from ollana.cli.config import CONFIG_OPTION, config_group, resolve
from ollana.cli.device import device
from ollana.cli.doctor import doctor
from ollana.cli.peer import peer
from ollana.cli.peers import peers
from ollana.config import (
    DISCOVERY_DEFAULT_GROUP,
    DISCOVERY_DEFAULT_GROUP6,
    DISCOVERY_DEFAULT_PORT,
    Config,
    LogFormat,
    Mode,
    Timings,
    Trust,
    default_state_dir,
    parse_endpoint,
    parse_group,
    parse_ollama_host,
    parse_parallel,
)
from ollana.configfile import GRACE_RANGE, HEARTBEAT_RANGE, PARALLEL_RANGE, PORT_RANGE, as_options
from ollana.errors import ConfigError, StartupError, print_error
from ollana.service import control, daemon, hardstop, pidfile
from ollana.service.record import NO_FILES, NodeFiles

if TYPE_CHECKING:  # runtime imports aiohttp: keep `ollana status` and `stop` quick to start
    from ollana.runtime import Ready

log = structlog.get_logger(__name__)


def _endpoint(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_endpoint(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _group(version: int) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        try:
            return parse_group(value, version)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return check


def _peers(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    try:
        peers = tuple(parse_endpoint(v, default_port=11435) for v in values)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    for text, endpoint in zip(values, peers, strict=True):
        if endpoint.port == 0:
            raise click.BadParameter(f"invalid address {text.strip()!r}: port 0 is not a server's port")
    return peers


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="ollana")
def cli() -> None:
    """ollana: Ollama over LAN.

    Run `ollana serve` on every machine. Where an Ollama runs it becomes a server: it shares that
    Ollama on the LAN. Elsewhere it becomes a client: Ollama apps on that machine use the
    network's Ollama at 127.0.0.1:11434 with no configuration.
    """


@cli.command()
@CONFIG_OPTION
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default="auto", show_default=True,
              help="auto: if the local Ollama answers at start, server, or both when 127.0.0.1:11434 is free "
                   "(Ollama on another port); else client. both: share the local Ollama and let this "
                   "machine's apps use the whole fleet at 127.0.0.1:11434.")
@click.option("--force-server-mode", is_flag=True, help="Same as --mode server (kept for users of the original ollana).")
@click.option("--ollama", "ollama", metavar="URL",
              help="The local Ollama to share. Default: from OLLAMA_HOST, as Ollama reads it, else http://127.0.0.1:11434.")
@click.option("--listen", callback=_endpoint, metavar="HOST:PORT",
              help="Where to listen. Default: 127.0.0.1:11434 as client, 0.0.0.0:11435 as server.")
@click.option("--lan-listen", callback=_endpoint, metavar="HOST:PORT",
              help="Role both: where the LAN proxy listens (default 0.0.0.0:11435); --listen is then the "
                   "client listener's address.")
@click.option("--discovery-port", type=click.IntRange(*PORT_RANGE), default=DISCOVERY_DEFAULT_PORT, show_default=True,
              help="UDP port of discovery heartbeats and probes.")
@click.option("--multicast-group", default=DISCOVERY_DEFAULT_GROUP, show_default=True, metavar="IPV4",
              callback=_group(4), help="IPv4 multicast group of discovery (administratively scoped).")
@click.option("--multicast-group6", default=DISCOVERY_DEFAULT_GROUP6, show_default=True, metavar="IPV6",
              callback=_group(6), help="IPv6 multicast group of discovery (link-local scope, ff02::/16).")
@click.option("--interface", "interfaces", multiple=True, metavar="NAME",
              help="Run discovery on this interface (repeatable). Default: every up, multicast-capable, non-loopback one.")
@click.option("--heartbeat-interval", type=click.FloatRange(*HEARTBEAT_RANGE), default=2.0, show_default=True, metavar="SECONDS",
              help="Seconds between a server's heartbeats; peers expire after 3 missed ones.")
@click.option("--peer", "peers", multiple=True, callback=_peers, metavar="HOST[:PORT]",
              help="A server to use besides the discovered ones (repeatable; port defaults to 11435).")
@click.option("--no-discovery/--discovery", default=False,
              help="Neither announce nor listen for servers, by heartbeats or mDNS (use with --peer). "
                   "--discovery undoes a config file's no_discovery = true.")
@click.option("--advertise-ollama/--no-advertise-ollama", default=False,
              help="Server, --trust open only: also register _ollama._tcp.local. by mDNS (instance = host name, "
                   "TXT version=), so mDNS-aware Ollama apps find this server's proxy.")
@click.option("--trust", type=click.Choice([t.value for t in Trust]), default="devices", show_default=True,
              help="devices: mutual TLS, only paired devices (`ollana device pending`, `ollana device allow`). "
                   "open: plain HTTP, anyone on the network may use the server and read prompts.")
@click.option("--parallel", type=click.IntRange(*PARALLEL_RANGE), metavar="N",
              help="Server: requests one loaded model serves at once, told to clients for routing. "
                   "Default: OLLAMA_NUM_PARALLEL if set, else 1 (Ollama's default).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OLLANA_HOME",
              help="Where ollana keeps its state [env: OLLANA_HOME].")
@click.option("--log-format", type=click.Choice([f.value for f in LogFormat]), default="auto", show_default=True,
              help="console on a terminal, JSON otherwise. Levels come from OLLANA_LOG (e.g. info,ollana.discovery=debug).")
@click.option("--grace", type=click.FloatRange(*GRACE_RANGE), default=10.0, show_default=True, metavar="SECONDS",
              help="On shutdown, how long in-flight requests may take to finish.")
@click.option("-d", "--daemon", "daemonize", is_flag=True,
              help="Detach and run in the background; exit 0 once the daemon serves, else print its error.")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Pid file [with -d, default: /run/ollana.pid as root, else $XDG_RUNTIME_DIR/ollana.pid, "
                   "else in the state dir; without -d: none unless given].")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Log to this file, reopened on SIGHUP [with -d, default: /var/log/ollana/serve.log as root, "
                   "else serve.log in the state dir; without -d: standard error unless given].")
@click.pass_context
def serve(ctx: click.Context, /, **opts: Any) -> None:
    """Serve: share the local Ollama (server) or use the LAN's Ollamas (client).

    SIGTERM or SIGINT stops it gracefully. SIGHUP reopens the log file and reloads log levels
    (from STATE_DIR/log_levels if that file exists, else OLLANA_LOG). Every option but -d and
    --config can be set in the config file (`ollana config show` prints what serve would use).
    """
    is_root = os.geteuid() == 0
    opts = {**opts, **as_options(resolve(ctx, opts, os.environ, is_root=is_root).settings)}
    config = build_config(opts, os.environ, is_root=is_root)
    levels = daemon.LogLevels(_log_spec(os.environ), config.state_dir / daemon.LOG_LEVELS_FILE)
    try:
        spec, _source = levels.load()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if opts.get("daemonize"):
        paths = daemon.Paths(
            opts.get("pid_file") or pidfile.default_pid_file(os.environ, is_root=is_root, state_dir=config.state_dir),
            opts.get("log_file") or daemon.default_log_file(is_root=is_root, state_dir=config.state_dir),
        )
        sys.exit(daemon.start(config, paths, levels, run_node))
    log_file: Path | None = opts.get("log_file")
    try:
        handler = daemon.configure_logging(spec, config.log_format, log_file)
    except OSError as exc:
        _fail(f"cannot open the log file {log_file}: {exc.strerror or exc}", 1)
    reload = daemon.Reloader(handler, levels, spec).reload
    pid_file: Path | None = opts.get("pid_file")
    files = NodeFiles(Path(os.path.abspath(pid_file)) if pid_file else None,
                      Path(os.path.abspath(log_file)) if log_file else None)
    try:
        with pidfile.hold(pid_file):
            run_foreground(config, on_hangup=reload, files=files)
    except StartupError as exc:  # the pid file is held by another ollana, or cannot be written
        _fail(str(exc), 1)


def build_config(opts: Mapping[str, Any], env: Mapping[str, str], *, is_root: bool) -> Config:
    mode = Mode.SERVER if opts.get("force_server_mode") else Mode(opts.get("mode") or "auto")
    trust = Trust(opts.get("trust") or "devices")
    if opts.get("advertise_ollama") and trust is not Trust.OPEN:
        raise click.UsageError("--advertise-ollama needs --trust open: an Ollama app that finds the server "
                               "by _ollama._tcp talks plain HTTP and cannot pair")
    flag = opts.get("ollama")
    try:
        # OLLAMA_HOST is read as Ollama reads it (a bad port means its default); --ollama strictly.
        ollama_url = parse_ollama_host(flag or env.get("OLLAMA_HOST"), strict=bool(flag))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--ollama'" if flag else "OLLAMA_HOST") from None
    state_dir = opts.get("state_dir") or default_state_dir(env, is_root=is_root)
    timings = replace(Timings(), heartbeat_interval=float(opts.get("heartbeat_interval") or 2.0),
                      grace=float(opts.get("grace", 10.0)))
    return Config(
        mode=mode,
        ollama_url=ollama_url,
        listen=opts.get("listen"),
        lan_listen=opts.get("lan_listen"),
        discovery=not opts.get("no_discovery"),
        advertise_ollama=bool(opts.get("advertise_ollama")),
        discovery_port=int(opts.get("discovery_port") or DISCOVERY_DEFAULT_PORT),
        discovery_group=str(opts.get("multicast_group") or DISCOVERY_DEFAULT_GROUP),
        discovery_group6=str(opts.get("multicast_group6") or DISCOVERY_DEFAULT_GROUP6),
        interfaces=tuple(opts.get("interfaces") or ()),
        static_peers=tuple(opts.get("peers") or ()),
        state_dir=Path(state_dir),
        log_format=LogFormat(opts.get("log_format") or "auto"),
        trust=trust,
        parallel=opts.get("parallel") or parse_parallel(env.get("OLLAMA_NUM_PARALLEL")),
        timings=timings,
    )


def _log_spec(env: Mapping[str, str]) -> logconf.LogSpec:
    try:
        return logconf.parse_directives(env.get("OLLANA_LOG"))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def run_node(
    config: Config, on_ready: Callable[[Ready], None], on_hangup: Callable[[], None] = lambda: None,
    files: NodeFiles = NO_FILES,
) -> None:
    """Run the node until SIGTERM/SIGINT (graceful); SIGHUP calls ``on_hangup`` (reopen logs,
    reload levels) and makes the node re-read its allow list at once. Raises ConfigError or
    StartupError when it cannot start."""
    from ollana import app

    async def main() -> None:
        shutdown, reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        hard_stop = hardstop.HardStop.after_grace(config.timings.grace, loop)

        def stop() -> None:
            shutdown.set()
            hard_stop.arm()  # never disarmed: the process ends on its own first, or by it

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)

        def hangup() -> None:
            on_hangup()
            reload.set()

        loop.add_signal_handler(signal.SIGHUP, hangup)
        await app.run(config, shutdown, on_ready, reload=reload, files=files)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): about a third more proxy throughput (bench)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_foreground(
    config: Config,
    on_ready: Callable[[Ready], None] = lambda _r: None,
    on_hangup: Callable[[], None] = lambda: None,
    files: NodeFiles = NO_FILES,
) -> None:
    """Run until SIGTERM/SIGINT. Exits 1 on a startup error, 2 on a configuration error."""
    try:
        run_node(config, on_ready, on_hangup, files)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        _fail(str(exc), 1)


_PID_FILE_OPTION = click.option(
    "--pid-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
    help="The pid file `serve -d` wrote [default: as for `serve -d`].",
)
_STATE_DIR_OPTION = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OLLANA_HOME",
    help="The state dir, for the default pid file of a non-root user [env: OLLANA_HOME].",
)


def _pid_file(pid_file: Path | None, state_dir: Path | None) -> Path:
    if pid_file is not None:
        return pid_file
    is_root = os.geteuid() == 0
    state = state_dir or default_state_dir(os.environ, is_root=is_root)
    return pidfile.default_pid_file(os.environ, is_root=is_root, state_dir=state)


@cli.command()
@_PID_FILE_OPTION
@_STATE_DIR_OPTION
@click.option("--timeout", type=click.FloatRange(0, 3600), metavar="SECONDS",
              help="How long to wait for it to exit [default: its grace period + 5 s].")
def stop(pid_file: Path | None, state_dir: Path | None, timeout: float | None) -> None:
    """Stop the running ollana (found as `status` finds it): SIGTERM, then wait for the graceful exit.

    Exit 0 when it stopped (or was not running), 1 when it is still running after the wait.
    """
    node = nodeops.locate(state_dir) if pid_file is None else None
    if node is not None:  # found by its runtime record (ollana/service/record.py: where it looks)
        sys.exit(control.stop(Path(node.pid_file), timeout=timeout) if node.pid_file
                 else control.stop_record(node, timeout=timeout))
    sys.exit(control.stop(_pid_file(pid_file, state_dir), timeout=timeout))


@cli.command()
@_PID_FILE_OPTION
@_STATE_DIR_OPTION
def status(pid_file: Path | None, state_dir: Path | None) -> None:
    """Whether ollana runs, with its pid, role, uptime and peers.

    Without --pid-file it finds the running node, daemon or foreground, by its runtime record
    (the default pid file's run dir, /run/ollana, the state dir; see docs/operations.md).

    LSB exit codes: 0 running, 1 not running but the pid file remains, 3 not running, 4 unknown.
    """
    node = nodeops.locate(state_dir) if pid_file is None else None
    if node is not None:  # found by its runtime record, foreground nodes included
        sys.exit(control.status(Path(node.pid_file)) if node.pid_file else control.status_of(node))
    sys.exit(control.status(_pid_file(pid_file, state_dir)))


def _fail(message: str, code: int) -> NoReturn:
    print_error(message)
    sys.exit(code)


cli.add_command(device)
cli.add_command(peers)
cli.add_command(peer)
cli.add_command(doctor)
cli.add_command(config_group(serve, build_config))


def overview(ctx: click.Context) -> str:
    """Usage and the command list of a group, without its long help."""
    formatter = ctx.make_formatter()
    ctx.command.format_usage(ctx, formatter)
    if isinstance(ctx.command, click.Group):
        ctx.command.format_commands(ctx, formatter)
    formatter.write_paragraph()
    formatter.write_text(f"See `{ctx.command_path} COMMAND --help` for a command's options.")
    return formatter.getvalue().rstrip("\n")


def main() -> None:
    try:
        code = cli.main(prog_name="ollana", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        # `ollana` (or `ollana device`) alone asks what there is, as `git` alone does: not an error.
        click.echo(overview(exc.ctx))
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
