"""The config file at the edge: which file, reading it, which flags the user gave; and
`ollana config show` / `ollana config path`. The decisions are in ``ollana.configfile``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ollana import configfile
from ollana.config import Endpoint, default_state_dir
from ollana.configfile import KEYS, Origin, Setting
from ollana.errors import ConfigError
from ollana.service import daemon, pidfile


class ConfigFileError(click.ClickException):
    """A config file that cannot be used: one line, exit 2 like a usage error."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Resolved:
    file: Path
    found: bool  # False: the default file does not exist (fine), so only defaults, env and flags
    settings: dict[str, Setting]


CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
    help="Settings file (TOML; keys are the options' names: heartbeat_interval = 5). Default: "
         "/etc/ollana/ollana.toml with the state dir /var/lib/ollana, else STATE_DIR/ollana.toml; "
         "a missing default file is fine. Flags > environment > file > defaults.",
)


def _flag_name(ctx: click.Context, param_name: str, value: object) -> str:
    for param in ctx.command.params:
        if param.name == param_name and isinstance(param, click.Option):
            if param.secondary_opts and value is False:
                return param.secondary_opts[0]
            return max(param.opts, key=len)
    return param_name


def given_flags(ctx: click.Context, opts: Mapping[str, Any]) -> dict[str, Setting]:
    """The settings the user gave on the command line (click's ParameterSource tells a flag from
    a default or an environment variable, which the merge reads itself)."""
    flags: dict[str, Setting] = {}
    for key in KEYS:
        if key.param in opts and ctx.get_parameter_source(key.param) is ParameterSource.COMMANDLINE:
            value = opts[key.param]
            flags[key.name] = Setting(value, Origin.FLAG, _flag_name(ctx, key.param, value))
    if opts.get("force_server_mode") and "mode" not in flags:
        flags["mode"] = Setting("server", Origin.FLAG, "--force-server-mode")
    return flags


def locate(explicit: Path | None, flags: Mapping[str, Setting], env: Mapping[str, str], *, is_root: bool) -> Path:
    """--config, else the default file of the state dir given by flag or OLLANA_HOME (or the
    default one): the file cannot say where the file is."""
    if explicit is not None:
        return explicit
    state_dir = flags["state_dir"].value if "state_dir" in flags else default_state_dir(env, is_root=is_root)
    return configfile.default_config_file(Path(str(state_dir)))


def read_file(path: Path, *, required: bool) -> dict[str, object] | None:
    """The file's checked values; None when a default file does not exist."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        # A default file under a state dir that is not there (or is not a directory) is simply
        # absent: the state dir's own problem is reported by serve, in its own words.
        if required:
            raise ConfigFileError(f"{path}: no such config file (given with --config)") from None
        return None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        # Absolute, so the file's relative paths stay right after `serve -d` moves to /.
        return configfile.parse_file(data.decode("utf-8"), Path(os.path.abspath(path)))
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: invalid TOML: not UTF-8 text") from None
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from None


def resolve(ctx: click.Context, opts: Mapping[str, Any], env: Mapping[str, str], *, is_root: bool) -> Resolved:
    flags = given_flags(ctx, opts)
    explicit: Path | None = opts.get("config_file")
    path = locate(explicit, flags, env, is_root=is_root)
    values = read_file(path, required=explicit is not None)
    settings = configfile.merge(flags, env, values or {}, path)
    if settings["state_dir"].value is None:
        settings["state_dir"] = Setting(default_state_dir(env, is_root=is_root), Origin.DEFAULT)
    return Resolved(path, values is not None, settings)


def _shown(name: str, value: object, opts: Mapping[str, Any], state_dir: Path, is_root: bool) -> object:
    """A value as JSON shows it; None says what is used instead."""
    if isinstance(value, Endpoint | Path):
        return str(value)
    if isinstance(value, tuple):
        return [_shown(name, v, opts, state_dir, is_root) for v in value]
    if value is None and opts.get("daemonize"):
        if name == "pid_file":
            return str(pidfile.default_pid_file(os.environ, is_root=is_root, state_dir=state_dir))
        if name == "log_file":
            return str(daemon.default_log_file(is_root=is_root, state_dir=state_dir))
    return value


# What None means (with -d, the pid and log files' defaults are shown themselves).
_NONE_TEXT = {
    "listen": "(client 127.0.0.1:11434, server 0.0.0.0:11435)",
    "lan_listen": "(0.0.0.0:11435)",
    "log_file": "(standard error)",
}


def _text(name: str, value: object) -> str:
    if value is None:
        return _NONE_TEXT.get(name, "(none)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render(resolved: Resolved, shown: Mapping[str, object]) -> str:
    state = "" if resolved.found else " (not found: defaults)"
    lines = [f"config file: {resolved.file}{state}", ""]
    rows = [(name, _text(name, shown[name]), s.source()) for name, s in resolved.settings.items()]
    widths = [max(len(r[i]) for r in [("KEY", "VALUE", "SOURCE"), *rows]) for i in range(2)]
    for name, value, source in [("KEY", "VALUE", "SOURCE"), *rows]:
        lines.append(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip())
    return "\n".join(lines)


def as_json(resolved: Resolved, shown: Mapping[str, object]) -> str:
    doc = {
        "config_file": str(resolved.file),
        "config_file_found": resolved.found,
        "settings": {
            name: {"value": shown[name], "source": s.origin.value, "from": s.where or None}
            for name, s in resolved.settings.items()
        },
    }
    return json.dumps(doc, indent=2)


Build = Callable[[Mapping[str, Any], Mapping[str, str]], object]


def show_settings(ctx: click.Context, opts: Mapping[str, Any], build: Build, *, as_json_doc: bool) -> None:
    from ollana.config import parse_ollama_host

    is_root = os.geteuid() == 0
    resolved = resolve(ctx, opts, os.environ, is_root=is_root)
    # What serve refuses across keys (advertise_ollama without trust open) is refused here too.
    build({**opts, **configfile.as_options(resolved.settings)}, os.environ)
    state_dir = Path(str(resolved.settings["state_dir"].value))
    shown = {name: _shown(name, s.value, opts, state_dir, is_root) for name, s in resolved.settings.items()}
    try:  # the URL serve connects to, as OLLAMA_HOST's rules read it
        shown["ollama"] = parse_ollama_host(str(shown["ollama"]))
    except ConfigError as exc:
        raise ConfigFileError(f"{resolved.settings['ollama'].source()}: ollama: {exc}") from None
    click.echo(as_json(resolved, shown) if as_json_doc else render(resolved, shown))


def config_group(serve: click.Command, build_config: Callable[..., object]) -> click.Group:
    """`ollana config`: `show` takes serve's options, so it shows what that serve would use;
    ``build_config`` is serve's, which ``show`` runs for the checks across keys."""

    def build(opts: Mapping[str, Any], env: Mapping[str, str]) -> object:
        return build_config(opts, env, is_root=os.geteuid() == 0)

    @click.group("config")
    def group() -> None:
        """The settings file (ollana.toml) and the settings `ollana serve` would use."""

    @click.pass_context
    def show(ctx: click.Context, /, **opts: Any) -> None:
        """Print each setting `ollana serve` would use with these options, and where it comes
        from: default, file PATH, env VAR or flag --NAME."""
        show_settings(ctx, opts, build, as_json_doc=bool(opts.pop("json_doc", False)))

    json_option = click.Option(["--json", "json_doc"], is_flag=True, help="Print JSON, for machines.")
    group.add_command(click.Command(
        "show", callback=show, params=[*serve.params, json_option], help=show.__doc__,
        short_help="The settings serve would use, and where each comes from.",
        context_settings={"max_content_width": 100},
    ))

    @group.command("path", short_help="The config file serve would read.")
    @CONFIG_OPTION
    @click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OLLANA_HOME",
                  help="The state dir whose config file to name [env: OLLANA_HOME].")
    def path(config_file: Path | None, state_dir: Path | None) -> None:
        """Print the config file `ollana serve` reads (with these options); exit 1 if it does not exist."""
        # Without --state-dir, the default state dir reads OLLANA_HOME itself.
        flags = {"state_dir": Setting(state_dir, Origin.FLAG)} if state_dir is not None else {}
        found = locate(config_file, flags, os.environ, is_root=os.geteuid() == 0)
        click.echo(found)
        sys.exit(0 if found.is_file() else 1)

    return group
