"""`ollana config show` / `config path`, and `ollana serve` building its Config from the file
(the node itself is never started: run_foreground is replaced by a recorder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ollana.cli import main as cli_main
from ollana.config import Config, Endpoint, Mode, Trust
from ollana.service import daemon

# Variables serve reads, unset so the machine's environment cannot leak into a test.
CLEAN_ENV: dict[str, str | None] = {"OLLAMA_HOST": None, "OLLAMA_NUM_PARALLEL": None, "OLLANA_LOG": None}


def invoke(args: list[str], env: dict[str, str | None]) -> Result:
    return CliRunner().invoke(cli_main.cli, args, env={**CLEAN_ENV, **env})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    return state


def test_show_says_where_each_setting_comes_from(home: Path) -> None:
    (home / "ollana.toml").write_text('heartbeat_interval = 5\nmode = "server"\npeer = ["10.0.0.2"]\n')
    result = invoke(["config", "show", "--mode", "client", "--grace", "3"],
                    {"OLLANA_HOME": str(home), "OLLAMA_HOST": "127.0.0.1:11433"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"config file: {home / 'ollana.toml'}"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["KEY"].split() == ["KEY", "VALUE", "SOURCE"]
    assert rows["mode"].split() == ["mode", "client", "flag", "--mode"]
    assert rows["grace"].split() == ["grace", "3", "flag", "--grace"]
    assert rows["ollama"].split() == ["ollama", "http://127.0.0.1:11433", "env", "OLLAMA_HOST"]
    assert rows["heartbeat_interval"].split() == ["heartbeat_interval", "5", "file", str(home / "ollana.toml")]
    assert rows["peer"].split() == ["peer", "10.0.0.2:11435", "file", str(home / "ollana.toml")]
    assert rows["state_dir"].split() == ["state_dir", str(home), "env", "OLLANA_HOME"]
    assert rows["trust"].split() == ["trust", "devices", "default"]
    # Aligned: every SOURCE starts in the same column.
    assert len({line.rindex(" default") for line in lines[2:] if line.endswith(" default")}) == 1


def test_show_json(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('listen = "127.0.0.1:11500"\nno_discovery = true\n')
    result = invoke(["config", "show", "--json", "--config", str(config), "--discovery"], {"OLLANA_HOME": str(home)})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["config_file"] == str(config) and doc["config_file_found"] is True
    settings = doc["settings"]
    assert settings["listen"] == {"value": "127.0.0.1:11500", "source": "file", "from": str(config)}
    assert settings["no_discovery"] == {"value": False, "source": "flag", "from": "--discovery"}
    assert settings["interface"] == {"value": [], "source": "default", "from": None}
    assert settings["heartbeat_interval"] == {"value": 2.0, "source": "default", "from": None}


def test_a_missing_default_file_is_fine_and_a_missing_explicit_one_is_an_error(home: Path, tmp_path: Path) -> None:
    result = invoke(["config", "show"], {"OLLANA_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"config file: {home / 'ollana.toml'} (not found: defaults)"
    missing = tmp_path / "nope.toml"
    result = invoke(["config", "show", "--config", str(missing)], {"OLLANA_HOME": str(home)})
    assert result.exit_code == 2
    assert f"{missing}: no such config file (given with --config)" in result.output
    # A state dir under a plain file: no default file there either (serve reports the state dir).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke(["config", "show"], {"OLLANA_HOME": str(blocker / "state")})
    assert result.exit_code == 0, result.output


def test_config_path(home: Path) -> None:
    result = invoke(["config", "path"], {"OLLANA_HOME": str(home)})
    assert (result.exit_code, result.output) == (1, f"{home / 'ollana.toml'}\n")
    (home / "ollana.toml").write_text("")
    assert invoke(["config", "path"], {"OLLANA_HOME": str(home)}).exit_code == 0
    assert invoke(["config", "path", "--state-dir", "/var/lib/ollana"], {}).output == "/etc/ollana/ollana.toml\n"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """serve's Config, recorded instead of running the node (and logging left alone)."""
    configs: list[Config] = []

    def record(config: Config, *_args: Any, **_kwargs: Any) -> None:
        configs.append(config)

    monkeypatch.setattr(cli_main, "run_foreground", record)
    monkeypatch.setattr(daemon, "configure_logging", lambda *_a: None)
    return configs


def test_serve_uses_the_file_and_flags_win(home: Path, started: list[Config]) -> None:
    (home / "ollana.toml").write_text(
        'mode = "server"\nheartbeat_interval = 0.5\ntrust = "open"\nadvertise_ollama = true\n'
        'listen = "127.0.0.1:11500"\nparallel = 3\ngrace = 1\npeer = "10.0.0.2:9"\ninterface = ["lo"]\n'
        'no_discovery = true\nollama = "127.0.0.1:11433"\n'
    )
    result = invoke(["serve", "--grace", "4", "--discovery"], {"OLLANA_HOME": str(home), "OLLAMA_NUM_PARALLEL": "2"})
    assert result.exit_code == 0, result.output
    [config] = started
    assert config.mode is Mode.SERVER
    assert config.trust is Trust.OPEN and config.advertise_ollama
    assert config.timings.heartbeat_interval == 0.5
    assert config.timings.grace == 4.0  # flag over file
    assert config.discovery is True  # --discovery over the file's no_discovery = true
    assert config.parallel == 2  # OLLAMA_NUM_PARALLEL over the file
    assert config.listen == Endpoint("127.0.0.1", 11500)
    assert config.static_peers == (Endpoint("10.0.0.2", 9),)
    assert config.interfaces == ("lo",)
    assert config.ollama_url == "http://127.0.0.1:11433"
    assert config.state_dir == home


def test_serve_with_a_bad_file_exits_2_before_anything_runs(home: Path, started: list[Config]) -> None:
    (home / "ollana.toml").write_text('heartbeat_interval = "fast"\n')
    result = invoke(["serve"], {"OLLANA_HOME": str(home)})
    assert result.exit_code == 2
    assert (f'{home / "ollana.toml"}: heartbeat_interval: must be a number of seconds between 0.05 and 3600 '
            '(got "fast")') in result.output
    assert started == []


def test_the_error_line_as_a_user_sees_it(tmp_path: Path) -> None:
    config = tmp_path / "ollana.toml"
    config.write_text("mode = 'server'\nparallel = \n")
    proc = subprocess.run(
        [sys.executable, "-m", "ollana", "config", "show", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"ollana: error: {config}: line 2, column 12: invalid TOML: Invalid value\n"


def test_show_refuses_what_serve_refuses_across_keys(home: Path) -> None:
    (home / "ollana.toml").write_text("advertise_ollama = true\n")
    result = invoke(["config", "show"], {"OLLANA_HOME": str(home)})
    assert result.exit_code == 2
    assert "--advertise-ollama needs --trust open" in result.output
    assert invoke(["config", "show", "--trust", "open"], {"OLLANA_HOME": str(home)}).exit_code == 0
