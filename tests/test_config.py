"""The config file: every option and its default, environment overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.agents import ONLY, OPTIONS
from runner.config import ConfigError, ProviderTable, load_config


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("MLRB_CONFIG", "MLRB_BUS_URL", "MLRB_SANDBOX", "MLRB_SANDBOX_IMAGE", "HF_ENDPOINT",
                "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def write(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults(home: Path) -> None:
    cfg = load_config(home)
    assert (cfg.bus_url, cfg.prefix, cfg.backend, cfg.image) == (None, "mlrb/v1", "auto",
                                                                 "mlrb-sandbox:latest")
    assert (cfg.max_runs, cfg.repaint_hz, cfg.keys, cfg.providers) == (4, 8.0, {}, {})
    assert cfg.db_path == home / "mlrb.db"


def test_a_good_file_sets_every_option(home: Path) -> None:
    write(home, """
[bus]
url = "mqtt://broker.lab:1883"
prefix = "/lab/v2/"
[sandbox]
backend = "local"
image = "mine:1"
[runner]
max_runs = 2
[console]
repaint_hz = 4
[console.keys]
kill = "ctrl+x"
[providers.anthropic]
base_url = "http://127.0.0.1:9"
model = "claude-x"
timeout_s = 30
""")
    cfg = load_config(home)
    assert (cfg.bus_url, cfg.prefix, cfg.backend, cfg.image) == ("mqtt://broker.lab:1883", "lab/v2",
                                                                 "local", "mine:1")
    assert (cfg.max_runs, cfg.repaint_hz, cfg.keys) == (2, 4.0, {"kill": "ctrl+x"})
    assert cfg.providers == {"anthropic": {"base_url": "http://127.0.0.1:9", "model": "claude-x",
                                           "timeout_s": 30.0}}
    assert cfg.raw["runner"] == {"max_runs": 2}


def test_the_environment_wins_over_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(home, '[bus]\nurl = "mqtt://file:1883"\n[sandbox]\nbackend = "docker"\nimage = "a:1"\n')
    monkeypatch.setenv("MLRB_BUS_URL", "mqtt://env:1883")
    monkeypatch.setenv("MLRB_SANDBOX", "local")
    monkeypatch.setenv("MLRB_SANDBOX_IMAGE", "b:2")
    cfg = load_config(home)
    assert (cfg.bus_url, cfg.backend, cfg.image) == ("mqtt://env:1883", "local", "b:2")
    other = home / "elsewhere.toml"
    other.write_text("[runner]\nmax_runs = 9\n")
    monkeypatch.setenv("MLRB_CONFIG", str(other))
    assert load_config(home).max_runs == 9
    monkeypatch.setenv("MLRB_SANDBOX", "vm")
    with pytest.raises(ConfigError, match="MLRB_SANDBOX must be auto, docker or local, not 'vm'"):
        load_config(home)


def test_the_hub_table_and_its_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(home, '[hub]\nendpoint = "http://hub.lab:8080"\ntoken = "hf_file"\n')
    cfg = load_config(home)
    assert (cfg.hub_endpoint, cfg.hub_token) == ("http://hub.lab:8080", "hf_file")
    assert "hf_file" not in repr(cfg)  # a token is never printed with the config
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    cfg = load_config(home)
    assert (cfg.hub_endpoint, cfg.hub_token) == ("http://127.0.0.1:9", "hf_env")
    write(home, '[hub]\ntokn = "x"\n')
    with pytest.raises(ConfigError, match="hub.tokn|tokn"):
        load_config(home)


def test_the_alarms_table(home: Path) -> None:
    cfg = load_config(home)
    assert (cfg.alarms.quiet_min, cfg.alarms.gpu_idle_min, cfg.alarms.llm_call_s) == (30, 20, 600)
    write(home, "[alarms]\nquiet_min = 5\ngpu_idle_min = 0\nllm_call_s = 90.5\n")
    cfg = load_config(home)
    assert (cfg.alarms.quiet_min, cfg.alarms.gpu_idle_min, cfg.alarms.llm_call_s) == (5, 0, 90.5)
    path = write(home, "[alarms]\nquiet_mins = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    assert str(caught.value) == (f"{path}: unknown key 'alarms.quiet_mins' "
                                 "(known: gpu_idle_min, llm_call_s, quiet_min)")


def test_an_unknown_key_is_named_with_the_file_and_the_known_keys(home: Path) -> None:
    path = write(home, "[consle]\nrepaint_hz = 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    assert str(caught.value) == (f"{path}: unknown key 'consle' "
                                 "(known: alarms, bus, console, hub, notify, providers, runner, sandbox)")
    write(home, "[console]\nrepaint = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'console\.repaint' \(known: ack_timeout_s, keys, repaint_hz\)"):
        load_config(home)
    write(home, '[providers.anthropic]\nbase_ulr = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'providers\.anthropic\.base_ulr' \(known: api_key,"):
        load_config(home)
    write(home, '[providers.antropic]\nbase_url = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'providers\.antropic' \(known: anthropic, openai\)"):
        load_config(home)


@pytest.mark.parametrize(("text", "message"), [
    ('[console]\nrepaint_hz = "fast"\n', "console.repaint_hz must be a number, got 'fast'"),
    ("[runner]\nmax_runs = 2.5\n", "runner.max_runs must be an integer, got 2.5"),
    ("[runner]\nmax_runs = 0\n", "runner.max_runs must be at least 1"),
    ("[bus]\nprefix = 5\n", "bus.prefix must be a string, got 5"),
    ("console = 3\n", "console must be a table, got 3"),
    ('[sandbox]\nbackend = "vm"\n', "sandbox.backend must be auto, docker or local, not 'vm'"),
    ("[console.keys]\nkill = 1\n", "console.keys.kill must be a string, got 1"),
    ('[alarms]\nquiet_min = "soon"\n', "alarms.quiet_min must be a number, got 'soon'"),
    ("[alarms]\nllm_call_s = -1\n", "alarms.llm_call_s must be at least 0"),
])
def test_a_wrong_type_is_named_with_the_file(home: Path, text: str, message: str) -> None:
    path = write(home, text)
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    assert str(caught.value) == f"{path}: {message}"


def test_bad_toml_is_named_with_the_file(home: Path) -> None:
    path = write(home, "[console\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid TOML"):
        load_config(home)


def test_the_provider_table_knows_every_agent_option() -> None:
    # `client` is an object a caller passes in code; a file cannot hold one
    every = OPTIONS.union(*ONLY.values())  # with the options only one provider takes
    assert set(ProviderTable.model_fields) == (every - {"client"}) | {"model"}


def test_the_scorer_image_is_configured_beside_the_sandbox_image(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLRB_SCORER_IMAGE", raising=False)
    assert load_config(home).scorer_image == "mlrb-scorer:latest"
    write(home, '[sandbox]\nimage = "mlrb-sandbox-gpu:latest"\nscorer_image = "mlrb-scorer-gpu:latest"\n')
    cfg = load_config(home)
    assert (cfg.image, cfg.scorer_image) == ("mlrb-sandbox-gpu:latest", "mlrb-scorer-gpu:latest")
    monkeypatch.setenv("MLRB_SCORER_IMAGE", "lab/scorer:2")
    assert load_config(home).scorer_image == "lab/scorer:2"
