"""The config file, pure: each key's type, the one-line errors, the merge's precedence, the
file's location, and that the keys, serve's options and the packaged example agree."""

from __future__ import annotations

import re
from pathlib import Path, PurePath

import click
import pytest

from ollana.cli.main import serve
from ollana.config import Endpoint
from ollana.configfile import (
    DEFAULTS,
    KEYS,
    KEYS_BY_NAME,
    SYSTEM_CONFIG_FILE,
    Origin,
    Setting,
    as_options,
    default_config_file,
    merge,
    parse_file,
)
from ollana.errors import ConfigError

FILE = PurePath("/etc/ollana/ollana.toml")
EXAMPLE = Path(__file__).resolve().parents[2] / "packaging" / "ollana.toml"
# serve's options that have no key: how to start (-d), which file, and an alias of mode = "server".
NOT_KEYS = {"daemonize", "config_file", "force_server_mode"}


def error(text: str, path: PurePath = FILE) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_file(text, path)
    return str(exc.value)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ('mode = "both"', "mode", "both"),
        ('ollama = "127.0.0.1:11433"', "ollama", "127.0.0.1:11433"),
        ('listen = "127.0.0.1:11500"', "listen", Endpoint("127.0.0.1", 11500)),
        ('lan_listen = "[::]:11435"', "lan_listen", Endpoint("::", 11435)),
        ("discovery_port = 11437", "discovery_port", 11437),
        ('multicast_group = "239.255.1.2"', "multicast_group", "239.255.1.2"),
        ('multicast_group6 = "FF02::1:2"', "multicast_group6", "ff02::1:2"),
        ('interface = "eth0"', "interface", ("eth0",)),
        ('interface = ["eth0", "wlan0"]', "interface", ("eth0", "wlan0")),
        ("interface = []", "interface", ()),
        ("heartbeat_interval = 5", "heartbeat_interval", 5.0),
        ("heartbeat_interval = 0.5", "heartbeat_interval", 0.5),
        ('peer = "gpu-box.lan"', "peer", (Endpoint("gpu-box.lan", 11435),)),
        ('peer = ["10.0.0.2:9", "[fd00::2]"]', "peer", (Endpoint("10.0.0.2", 9), Endpoint("fd00::2", 11435))),
        ("no_discovery = true", "no_discovery", True),
        ("advertise_ollama = false", "advertise_ollama", False),
        ('trust = "open"', "trust", "open"),
        ("parallel = 4", "parallel", 4),
        ('state_dir = "/srv/ollana"', "state_dir", Path("/srv/ollana")),
        ('state_dir = "state"', "state_dir", Path("/etc/ollana/state")),  # relative to the file
        ('log_format = "json"', "log_format", "json"),
        ("grace = 0", "grace", 0.0),
        ('pid_file = "/run/o.pid"', "pid_file", Path("/run/o.pid")),
        ('log_file = "../log/serve.log"', "log_file", Path("/etc/ollana/../log/serve.log")),
    ],
)
def test_each_key_reads_its_type(text: str, key: str, value: object) -> None:
    assert parse_file(text, FILE) == {key: value}


def test_the_issue_example_message() -> None:
    assert error('heartbeat_interval = "fast"') == (
        '/etc/ollana/ollana.toml: heartbeat_interval: must be a number of seconds between 0.05 and 3600 (got "fast")'
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heartbeat_interval = true", "heartbeat_interval: must be a number of seconds between 0.05 and 3600 (got true)"),
        ("heartbeat_interval = 0.01", "heartbeat_interval: must be a number of seconds between 0.05 and 3600 (got 0.01)"),
        ("grace = -1", "grace: must be a number of seconds between 0 and 3600 (got -1)"),
        ("discovery_port = 70000", "discovery_port: must be a UDP port from 1 to 65535 (got 70000)"),
        ("parallel = 1.5", "parallel: must be a whole number from 1 to 1024 (got 1.5)"),
        ('mode = "fast"', 'mode: must be one of "auto", "server", "client", "both" (got "fast")'),
        ('trust = "none"', 'trust: must be one of "devices", "open" (got "none")'),
        ('no_discovery = "yes"', 'no_discovery: must be true or false (got "yes")'),
        ("peer = [1]", 'peer: must be an address "HOST[:PORT]" or a list of them (got [1])'),
        ('interface = ""', 'interface: must be a non-empty string (got "")'),
        ('state_dir = "~/ollana"', 'state_dir: must be a full path (~ is not expanded) (got "~/ollana")'),
        ("mode = {a = 1}", "mode: must be one of \"auto\", \"server\", \"client\", \"both\" (got a table)"),
    ],
)
def test_a_bad_value_is_one_line_naming_file_key_and_what_is_allowed(text: str, message: str) -> None:
    got = error(text)
    assert got == f"{FILE}: {message}"
    assert "\n" not in got


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ('listen = "1.2.3.4"', 'listen: must be an address "HOST:PORT"; '),
        ('peer = ["10.0.0.1", "[fe80::1"]', 'peer: must be an address "HOST[:PORT]"; '),
        ('multicast_group = "ff02::1"', "multicast_group: must be an IPv4 multicast address; "),
        ('multicast_group6 = "ff05::1"', "multicast_group6: must be an IPv6 multicast address of link-local scope"),
        ('ollama = "ftp://x"', "ollama: must be an Ollama URL such as http://127.0.0.1:11434; "),
    ],
)
def test_a_value_config_py_refuses_says_what_is_allowed_and_why(text: str, allowed: str) -> None:
    # The reason after ";" is the parser's own (config.py), without its "invalid ... 'value'" prefix.
    got = error(text)
    assert got.startswith(f"{FILE}: {allowed}"), got
    assert got.endswith(f"(got {text.partition(' = ')[2]})"), got
    assert "invalid" not in got and "\n" not in got


def test_an_unknown_key_names_the_file_the_key_and_the_keys() -> None:
    got = error("heartbeat-interval = 3")
    assert got.startswith(f'{FILE}: heartbeat-interval: unknown key; did you mean "heartbeat_interval"? (keys: mode, ')
    assert got.endswith(", log_file)")
    assert error("[discovery]\nport = 1").startswith(f"{FILE}: discovery: unknown key")
    assert error("colour = 1") == f"{FILE}: colour: unknown key (keys: {', '.join(KEYS_BY_NAME)})"


def test_options_without_a_key_say_what_to_do_instead() -> None:
    assert error("daemon = true") == f"{FILE}: daemon: not a file setting: start with `ollana serve -d`"
    assert error("force-server-mode = true") == f'{FILE}: force-server-mode: not a file setting: write mode = "server"'
    assert error("listen = 11500") == f'{FILE}: listen: must be an address "HOST:PORT" (a string) (got 11500)'


def test_bad_toml_says_line_and_column() -> None:
    assert error('mode = "server"\ngrace = \n') == f"{FILE}: line 2, column 9: invalid TOML: Invalid value"
    assert error('mode = "a"\nmode = "b"\n').startswith(f"{FILE}: line 2, column ")


def test_an_empty_file_sets_nothing() -> None:
    assert parse_file("# nothing here\n", FILE) == {}


def test_precedence_flag_over_env_over_file_over_default() -> None:
    file_values = {"ollama": "10.0.0.5:11434", "parallel": 4, "state_dir": Path("/srv/f"), "grace": 3.0, "mode": "client"}
    env = {"OLLAMA_HOST": "10.0.0.6", "OLLAMA_NUM_PARALLEL": "8", "OLLANA_HOME": "/srv/e"}
    flags = {"ollama": Setting("10.0.0.7", Origin.FLAG, "--ollama")}
    got = merge(flags, env, file_values, FILE)
    assert got["ollama"] == Setting("10.0.0.7", Origin.FLAG, "--ollama")
    assert got["parallel"] == Setting(8, Origin.ENV, "OLLAMA_NUM_PARALLEL")
    assert got["state_dir"] == Setting(Path("/srv/e"), Origin.ENV, "OLLANA_HOME")
    assert got["grace"] == Setting(3.0, Origin.FILE, str(FILE))
    assert got["mode"].source() == f"file {FILE}"
    assert got["trust"] == Setting("devices", Origin.DEFAULT)
    assert got["trust"].source() == "default"
    assert list(got) == [k.name for k in KEYS]
    # Without the environment the file speaks; without the file, the defaults.
    assert merge({}, {}, file_values, FILE)["ollama"] == Setting("10.0.0.5:11434", Origin.FILE, str(FILE))
    assert merge({}, {}, {}, None)["ollama"] == Setting("http://127.0.0.1:11434", Origin.DEFAULT)


def test_empty_environment_values_are_unset_and_parallel_reads_as_ollama_does() -> None:
    got = merge({}, {"OLLAMA_HOST": " ", "OLLAMA_NUM_PARALLEL": ""}, {"ollama": "x:1", "parallel": 2}, FILE)
    assert got["ollama"].origin is Origin.FILE and got["parallel"].origin is Origin.FILE
    assert merge({}, {"OLLAMA_NUM_PARALLEL": "lots"}, {"parallel": 2}, FILE)["parallel"] == Setting(
        1, Origin.ENV, "OLLAMA_NUM_PARALLEL")


def test_as_options_names_serves_parameters() -> None:
    opts = as_options(merge({}, {}, {"peer": (Endpoint("a", 1),), "interface": ("eth0",)}, FILE))
    assert opts["peers"] == (Endpoint("a", 1),)
    assert opts["interfaces"] == ("eth0",)
    assert "peer" not in opts


def test_the_config_file_location() -> None:
    assert default_config_file(Path("/var/lib/ollana")) == SYSTEM_CONFIG_FILE == Path("/etc/ollana/ollana.toml")
    assert default_config_file(Path("/home/u/.local/share/ollana")) == Path("/home/u/.local/share/ollana/ollana.toml")


def _serve_options() -> dict[str, click.Option]:
    return {p.name: p for p in serve.params if isinstance(p, click.Option) and p.name}


def test_every_serve_option_has_a_key_and_the_same_default() -> None:
    options = _serve_options()
    assert {k.param for k in KEYS} == set(options) - NOT_KEYS
    for key in KEYS:
        flag = max(options[key.param].opts, key=len)
        assert flag == "--" + key.name.replace("_", "-") or key.name in ("peer", "interface"), flag
        default = options[key.param].default
        if isinstance(default, int | float | str):  # the others have none (click's UNSET, None)
            assert DEFAULTS[key.name] == default, key.name


def _uncommented_example() -> str:
    return re.sub(r"^#(?=[a-z_0-9]+ = )", "", EXAMPLE.read_text(), flags=re.MULTILINE)


def test_the_packaged_example_lists_every_key_with_its_default() -> None:
    assert parse_file(EXAMPLE.read_text(), EXAMPLE) == {}  # all commented out
    values = parse_file(_uncommented_example(), EXAMPLE)
    assert set(values) == set(KEYS_BY_NAME)
    for name, value in values.items():
        if DEFAULTS[name] is not None:
            assert value == DEFAULTS[name], name
