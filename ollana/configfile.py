"""The config file (``ollana.toml``): TOML text → validated settings, and the merge of flags,
environment, file and defaults into the values ``serve`` uses, each with where it came from.

Pure: the CLI reads the file and the environment and passes them in. A key is a ``serve`` flag's
name without ``--`` and with ``-`` turned into ``_`` (``--heartbeat-interval`` →
``heartbeat_interval``); values are checked by the same parsers as the flags, so a file cannot
say what the command line may not.
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Final

from ollana.config import (
    DISCOVERY_DEFAULT_GROUP,
    DISCOVERY_DEFAULT_GROUP6,
    DISCOVERY_DEFAULT_PORT,
    PROXY_DEFAULT_PORT,
    SYSTEM_STATE_DIR,
    LogFormat,
    Mode,
    Trust,
    parse_endpoint,
    parse_group,
    parse_ollama_host,
    parse_parallel,
)
from ollana.errors import ConfigError

FILE_NAME: Final = "ollana.toml"
# The service's file: read when the state dir is the system one (/var/lib/ollana).
SYSTEM_CONFIG_FILE: Final = Path("/etc/ollana") / FILE_NAME

# Ranges shared by the flags and the file, so both accept the same values.
HEARTBEAT_RANGE: Final = (0.05, 3600.0)
GRACE_RANGE: Final = (0.0, 3600.0)
PARALLEL_RANGE: Final = (1, 1024)
PORT_RANGE: Final = (1, 65535)
# config.py's parsers say "invalid address 'x': why"; a file's error names the key and value itself.
_PARSER_PREFIX: Final = re.compile(r"^invalid [^'\"]*(['\"]).*?\1(: |$)")
# tomllib says "Invalid value (at line 2, column 9)".
_TOML_POSITION: Final = re.compile(r"^(?P<reason>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


class Origin(enum.Enum):
    DEFAULT = "default"
    FILE = "file"
    ENV = "env"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Setting:
    """One effective value and where it came from: ``where`` is the file's path, the environment
    variable's name or the flag (empty for a default)."""

    value: object
    origin: Origin
    where: str = ""

    def source(self) -> str:
        return f"{self.origin.value} {self.where}".strip()


class BadValue(ValueError):
    """A value a key does not allow; its text says what is allowed."""


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadValue("must be a non-empty string")
    return value.strip()


def _choice(values: list[str]) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in values:
            raise BadValue("must be one of " + ", ".join(f'"{v}"' for v in values))
        return value
    return check


def _number(low: float, high: float, what: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise BadValue(f"must be {what} between {low:g} and {high:g}")
        return float(value)
    return check


def _integer(low: int, high: int, what: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadValue(f"must be {what} from {low} to {high}")
        return value
    return check


def _boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise BadValue("must be true or false")
    return value


def _parsed(parse: Callable[[str], object], what: str) -> Callable[[object], object]:
    """A string checked by one of config.py's parsers; its reason joins what is allowed."""
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise BadValue(f"must be {what} (a string)")
        try:
            return parse(_text(value))
        except (ConfigError, BadValue) as exc:
            why = _PARSER_PREFIX.sub("", str(exc))
            raise BadValue(f"must be {what}" + (f"; {why}" if why else "")) from None
    return check


def _strings(one: Callable[[object], object], what: str) -> Callable[[object], object]:
    """A repeatable flag: one string or a list of them."""
    def check(value: object) -> object:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise BadValue(f"must be {what} or a list of them")
        return tuple(one(item) for item in items)
    return check


def _path(value: object) -> object:
    text = _text(value)
    if text.startswith("~"):
        raise BadValue("must be a full path (~ is not expanded)")
    return Path(text)


def _ollama(text: str) -> str:
    parse_ollama_host(text)  # raises on a bad scheme; the raw text is kept, as OLLAMA_HOST's is
    return text


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    param: str  # the click parameter it fills
    check: Callable[[object], object]
    env: str | None = None


KEYS: Final[tuple[Key, ...]] = (
    Key("mode", "mode", _choice([m.value for m in Mode])),
    Key("ollama", "ollama", _parsed(_ollama, "an Ollama URL such as http://127.0.0.1:11434"), env="OLLAMA_HOST"),
    Key("listen", "listen", _parsed(parse_endpoint, 'an address "HOST:PORT"')),
    Key("lan_listen", "lan_listen", _parsed(parse_endpoint, 'an address "HOST:PORT"')),
    Key("discovery_port", "discovery_port", _integer(*PORT_RANGE, "a UDP port")),
    Key("multicast_group", "multicast_group", _parsed(lambda t: parse_group(t, 4), "an IPv4 multicast address")),
    Key("multicast_group6", "multicast_group6",
        _parsed(lambda t: parse_group(t, 6), "an IPv6 multicast address of link-local scope (ff02::/16)")),
    Key("interface", "interfaces", _strings(_text, "an interface name")),
    Key("heartbeat_interval", "heartbeat_interval", _number(*HEARTBEAT_RANGE, "a number of seconds")),
    Key("peer", "peers", _strings(
        _parsed(lambda t: parse_endpoint(t, default_port=PROXY_DEFAULT_PORT), 'an address "HOST[:PORT]"'),
        'an address "HOST[:PORT]"')),
    Key("no_discovery", "no_discovery", _boolean),
    Key("advertise_ollama", "advertise_ollama", _boolean),
    Key("trust", "trust", _choice([t.value for t in Trust])),
    Key("parallel", "parallel", _integer(*PARALLEL_RANGE, "a whole number"), env="OLLAMA_NUM_PARALLEL"),
    Key("state_dir", "state_dir", _path, env="OLLANA_HOME"),
    Key("log_format", "log_format", _choice([f.value for f in LogFormat])),
    Key("grace", "grace", _number(*GRACE_RANGE, "a number of seconds")),
    Key("pid_file", "pid_file", _path),
    Key("log_file", "log_file", _path),
)
KEYS_BY_NAME: Final = MappingProxyType({k.name: k for k in KEYS})
# Values when neither flag, environment nor file says anything. None: decided later (the
# role's address, no pid or log file unless -d).
DEFAULTS: Final[Mapping[str, object]] = MappingProxyType({
    "mode": Mode.AUTO.value,
    "ollama": parse_ollama_host(None),
    "listen": None,
    "lan_listen": None,
    "discovery_port": DISCOVERY_DEFAULT_PORT,
    "multicast_group": DISCOVERY_DEFAULT_GROUP,
    "multicast_group6": DISCOVERY_DEFAULT_GROUP6,
    "interface": (),
    "heartbeat_interval": 2.0,
    "peer": (),
    "no_discovery": False,
    "advertise_ollama": False,
    "trust": Trust.DEVICES.value,
    "parallel": 1,
    "state_dir": None,
    "log_format": LogFormat.AUTO.value,
    "grace": 10.0,
    "pid_file": None,
    "log_file": None,
})



def default_config_file(state_dir: Path) -> Path:
    """Where the file is when no --config is given: the system state dir (a service's, and
    root's default) reads /etc/ollana/ollana.toml, any other state dir its own ollana.toml."""
    return SYSTEM_CONFIG_FILE if state_dir == SYSTEM_STATE_DIR else state_dir / FILE_NAME


def _repr(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_repr(v) for v in value) + "]"
    return str(value)


def parse_file(text: str, path: PurePath) -> dict[str, object]:
    """The file's settings by key, checked. Raises ConfigError with one line that names the
    file, the key (or the line and column of a syntax error) and what is allowed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_POSITION.match(str(exc))
        where = f"line {m['line']}, column {m['col']}: " if m else ""
        reason = m["reason"] if m else str(exc)
        raise ConfigError(f"{path}: {where}invalid TOML: {reason}") from None
    values: dict[str, object] = {}
    for name, raw in doc.items():
        key = KEYS_BY_NAME.get(name)
        if key is None:
            raise ConfigError(f"{path}: {name}: {_unknown(name)}")
        try:
            values[name] = key.check(raw)
        except BadValue as exc:
            raise ConfigError(f"{path}: {name}: {exc} (got {_repr(raw)})") from None
        if name in ("state_dir", "pid_file", "log_file"):
            # A relative path is relative to the file, not to wherever ollana was started.
            values[name] = Path(path).parent / str(values[name])
    return values


# Options deliberately without a key, and what to do instead.
_NOT_KEYS: Final = MappingProxyType({
    "daemon": "not a file setting: start with `ollana serve -d`",
    "config": "not a file setting: pass --config",
    "force_server_mode": 'not a file setting: write mode = "server"',
})


def _unknown(name: str) -> str:
    if name.replace("-", "_") in _NOT_KEYS:
        return _NOT_KEYS[name.replace("-", "_")]
    guess = difflib.get_close_matches(name.replace("-", "_"), KEYS_BY_NAME, n=1)
    hint = f'; did you mean "{guess[0]}"?' if guess else ""
    return f"unknown key{hint} (keys: {', '.join(KEYS_BY_NAME)})"


def _from_env(key: Key, env: Mapping[str, str]) -> object | None:
    """The key's environment variable, as serve has always read it; unset or empty is None."""
    raw = env.get(key.env or "", "").strip()
    if not raw:
        return None
    if key.name == "parallel":
        return parse_parallel(raw)  # as Ollama reads it: an invalid value is 1
    if key.name == "state_dir":
        return Path(raw)
    return raw


def merge(
    flags: Mapping[str, Setting],
    env: Mapping[str, str],
    file_values: Mapping[str, object],
    file_path: PurePath | None,
) -> dict[str, Setting]:
    """Every key's effective setting: a flag the user gave, else its environment variable, else
    the file, else the default. ``flags`` holds only flags given on the command line."""
    out: dict[str, Setting] = {}
    for key in KEYS:
        from_env = _from_env(key, env) if key.env else None
        if key.name in flags:
            out[key.name] = flags[key.name]
        elif from_env is not None:
            out[key.name] = Setting(from_env, Origin.ENV, key.env or "")
        elif key.name in file_values:
            out[key.name] = Setting(file_values[key.name], Origin.FILE, str(file_path))
        else:
            out[key.name] = Setting(DEFAULTS[key.name], Origin.DEFAULT)
    return out


def as_options(settings: Mapping[str, Setting]) -> dict[str, object]:
    """The settings as serve's click parameters (``peer`` → ``peers``...), for build_config."""
    return {KEYS_BY_NAME[name].param: s.value for name, s in settings.items()}
