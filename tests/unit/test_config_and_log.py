from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from ollana import log as logconf
from ollana.config import Endpoint, default_state_dir, parse_endpoint, parse_ollama_host
from ollana.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("  \"1.2.3.4\" ", "http://1.2.3.4:11434"),
        ("1.2.3.4:5678", "http://1.2.3.4:5678"),
        ("http://1.2.3.4", "http://1.2.3.4:80"),
        ("https://1.2.3.4", "https://1.2.3.4:443"),
        ("example.com", "http://example.com:11434"),
        ("https://example.com/ollama/", "https://example.com:443/ollama"),
        (":56789", "http://127.0.0.1:56789"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("[::]:11434", "http://[::1]:11434"),
        ("[fd77::2]:9000", "http://[fd77::2]:9000"),
        ("1.2.3.4:port", "http://1.2.3.4:11434"),
        ("ollama.com", "https://ollama.com:443"),
    ],
)
def test_ollama_host_follows_ollamas_rules(value: str | None, url: str) -> None:
    assert parse_ollama_host(value) == url


def test_ollama_host_rejects_other_schemes() -> None:
    with pytest.raises(ConfigError):
        parse_ollama_host("ftp://x")


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:11434", Endpoint("127.0.0.1", 11434)),
        (":8080", Endpoint("0.0.0.0", 8080)),
        ("[::1]:9", Endpoint("::1", 9)),
    ],
)
def test_parse_endpoint(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["nope", "1.2.3.4:99999", "::1:80", "[::1", "h:x"])
def test_parse_endpoint_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(text)


def test_state_dir_defaults() -> None:
    assert default_state_dir({"OLLANA_HOME": "/x"}, is_root=True) == Path("/x")
    assert default_state_dir({}, is_root=True) == Path("/var/lib/ollana")
    assert default_state_dir({"XDG_DATA_HOME": "/d"}, is_root=False) == Path("/d/ollana")
    assert default_state_dir({"HOME": "/h"}, is_root=False) == Path("/h/.local/share/ollana")


def test_directives() -> None:
    spec = logconf.parse_directives("info,ollana.discovery=debug,ollana::proxy=trace,aiohttp=off")
    assert spec.default == logging.INFO
    assert spec.targets == (("ollana.discovery", logging.DEBUG), ("ollana.proxy", logconf.TRACE),
                            ("aiohttp", logconf.OFF))
    assert logconf.parse_directives(None).default == logging.INFO
    assert logconf.parse_directives("WARN").default == logging.WARNING
    assert logconf.describe(spec) == "info,ollana.discovery=debug,ollana.proxy=trace,aiohttp=off"


@pytest.mark.parametrize("text", ["verbose", "ollana=loud", "=debug", "info,x=y"])
def test_bad_directive_names_it(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        logconf.parse_directives(text)
    assert "OLLANA_LOG" in str(info.value)


def test_configured_levels_filter_by_target_and_render_json() -> None:
    out = io.StringIO()
    logconf.configure(logconf.parse_directives("warn,ollana.discovery=debug"), stream=out)
    try:
        structlog.get_logger("ollana.discovery.service").debug("seen", a=1)
        structlog.get_logger("ollana.proxy.handler").info("hidden")
        structlog.get_logger("ollana.proxy.handler").warning("shown")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(line["event"], line["logger"]) for line in lines] == [
            ("seen", "ollana.discovery.service"), ("shown", "ollana.proxy.handler")]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        for name in ("ollana.discovery",):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_trace_level_is_below_debug_and_costs_nothing_when_off() -> None:
    unconfigured = logconf.get_logger("ollana.discovery.service")
    assert unconfigured.trace("bytes", hex="00") is None  # no configuration: no error, no output
    out = io.StringIO()
    logconf.configure(logconf.parse_directives("debug,ollana.discovery=trace"), stream=out)
    try:
        traced = logconf.get_logger("ollana.discovery.service")
        plain = logconf.get_logger("ollana.proxy.handler")
        assert traced.tracing() and not plain.tracing()
        traced.trace("packet_bytes", hex="0102")
        plain.trace("hidden", hex="03")
        plain.debug("shown")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(line["event"], line["level"]) for line in lines] == [
            ("packet_bytes", "trace"), ("shown", "debug")]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger("ollana.discovery").setLevel(logging.NOTSET)
