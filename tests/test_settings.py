"""Settings: the TOML file, environments, SERVICE_ variables and overrides, one line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.errors import SettingsError
from service.settings import (
    Limits,
    Settings,
    check_exposure,
    load_settings,
    settings_from_mapping,
)

CONFIG = Path(__file__).parents[1] / "config" / "settings.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SERVICE_"):
            monkeypatch.delenv(key)


def test_shipped_file_equals_the_documented_defaults() -> None:
    assert load_settings(CONFIG) == Settings()


def test_production_environment_replaces_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_ENV", "production")
    s = load_settings(CONFIG)
    assert (s.host, s.log_format, s.backend) == ("0.0.0.0", "json", "microvm")
    assert s.allowed_roots == (Path("/srv/actors"),)
    assert s.limits == Limits()


def test_env_variables_override_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_PORT", "6001")
    monkeypatch.setenv("SERVICE_AUTH__TOKENS", '["s3cret-0123456789"]')
    monkeypatch.setenv("SERVICE_LIMITS__TIMEOUT_S", "2.5")
    s = load_settings(CONFIG)
    assert (s.port, s.auth.tokens, s.limits.timeout_s) == (6001, ("s3cret-0123456789",), 2.5)
    assert s.limits.memory_mb == 128  # the rest of the table is kept


def test_command_line_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_PORT", "6001")
    s = load_settings(CONFIG, port=7000, host=None, backend="process")
    assert (s.port, s.host, s.backend) == (7000, "127.0.0.1", "process")


def test_every_problem_is_listed_on_one_line() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({"port": "x", "limits": {"timeout": 5}, "colour": "red"})
    message = str(info.value)
    assert "\n" not in message
    assert "colour: unknown setting" in message
    assert "port: expected a number, got 'x'" in message
    assert "limits: unknown key 'timeout'" in message


@pytest.mark.parametrize(("raw", "problem"), [
    ({"backend": "docker"},
     "backend: must be one of auto, microvm, gvisor, process, got 'docker'"),
    ({"sandbox": {"gvisor_platform": "systrap"}},
     "sandbox.gvisor_platform: must be one of ptrace, kvm"),
    ({"port": 70000}, "port: must be 1-65535, got 70000"),
    ({"log_format": "xml"}, "log_format: must be one of text, json"),
    ({"limits": {"pids": 1.5}}, "limits: pids: expected an integer, got 1.5"),
    ({"limits": {"network": "no"}}, "limits: network: expected true or false, got 'no'"),
    ({"limits": {"memory_mb": 4096}}, "limits.memory_mb: default is over limits_max.memory_mb"),
    ({"auth": {"tokens": "abc"}}, "auth: tokens: expected a list of strings"),
    ({"sandbox": {"uid_base": 500, "uid_count": 100}},
     "sandbox.uid_base: must be 1000 or more (system users and root are below), got 500"),
    ({"sandbox": {"uid_base": 60000, "uid_count": 10000}},
     "sandbox.uid_base/uid_count: the range must not hold 65534 (nobody)"),
    ({"sandbox": {"uid_base": 4_294_967_000, "uid_count": 1000}},
     "sandbox.uid_base + uid_count: the range ends at 4294967999, past the largest uid "
     "4294967294"),
    ({"sandbox": {"nofile": 16}}, "sandbox.nofile: must be 64 or more, got 16"),
    ({"sandbox": {"idle_lifetime_s": 0}}, "sandbox: idle_lifetime_s: must be positive, got 0"),
    ({"auth": {"tokens": ["a" * 16, ""]}},
     "auth.tokens[1]: a token must have at least 16 characters (use a long random string)"),
    ({"auth": {"admin_tokens": ["short"]}},
     "auth.admin_tokens[0]: a token must have at least 16 characters (use a long random string)"),
    ({"auth": {"tokens": ["a" * 16], "admin_tokens": ["a" * 16]}},
     "auth.admin_tokens: an admin token must differ from every call token"),
    ({"auth": {"tokens": ["a" * 16], "admin_tokens": ["a" * 16 + " "]}},
     "auth.admin_tokens[0]: a token must be printable ASCII, with no space at either end"),
    ({"state": {"redis_url": "redis://:s3cret/pass@127.0.0.1:1/1"}},
     "state.redis_url: not a Redis URL redis-py can read (percent-encode a password's "
     "/ ? # @ characters)"),
    ({"limits": {"network": True}},
     "limits.network: a default of true needs limits_max.network = true"),
    ({"limits_max": {"network_actors": "doubler"}},
     "limits_max: network_actors: expected a list of strings"),
    ({"connections": {"max_batch": 0}}, "connections: max_batch: must be positive, got 0"),
    ({"connections": {"allowed_origins": [1]}},
     "connections: allowed_origins: expected a list of strings"),
    ({"capacity": {"memory_mb": 64}}, "limits.memory_mb: default is over capacity.memory_mb"),
    ({"pool_max": {"min_warm": "8"}}, "pool_max: min_warm: expected a number, got '8'"),
    ({"limits": {"cpus": -1, "memory_mb": "lots", "pids": 0}},
     "limits: cpus: must be positive, got -1; limits: memory_mb: expected a number, got "
     "'lots'; limits: pids: must be positive, got 0"),
    ({"pool_max": {"min_warm": -1, "colour": 1}},
     "pool_max: unknown key 'colour'; pool_max: min_warm: must be 0 or more, got -1"),
    ({"pool_max": {"max_queue": 10}}, "pool_max.max_queue: under the default pool's max_queue "
     "(64), which every manifest without it asks for"),
    ({"limits_max": {"cpus": float("nan")}}, "limits_max: cpus: expected a finite number, got nan"),
    ({"limits_max": {"timeout_s": float("inf")}},
     "limits_max: timeout_s: expected a finite number, got inf"),
    ({"validation_timeout_s": float("inf")},
     "validation_timeout_s: expected a finite number, got inf"),
    ({"connections": {"max_response_bytes": 1_000_000}},
     "connections.max_response_bytes: under what one `process` answer may hold "
     "(2 x limits_max.output_bytes + max_message_bytes = 34603008)"),
])
def test_invalid_values_name_the_key(raw: dict, problem: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(raw)
    assert str(info.value) == problem


def test_nan_and_inf_are_refused_from_the_file_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TOML reads nan and inf: a maximum of nan would let every manifest through."""
    config = tmp_path / "settings.toml"
    config.write_text("[default.limits_max]\ncpus = nan\n")
    with pytest.raises(SettingsError, match="cpus: expected a finite number, got nan"):
        load_settings(config)
    monkeypatch.setenv("SERVICE_LIMITS__TIMEOUT_S", "inf")
    with pytest.raises(SettingsError, match="timeout_s: expected a finite number, got inf"):
        load_settings(CONFIG)


def test_new_tables_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_LIMITS_MAX__NETWORK_ACTORS", '["fetcher"]')
    monkeypatch.setenv("SERVICE_CONNECTIONS__ALLOWED_ORIGINS", '["https://flows.example"]')
    monkeypatch.setenv("SERVICE_CAPACITY__MEMORY_MB", "4096")
    monkeypatch.setenv("SERVICE_AUTH__ADMIN_TOKENS", '["admin-0123456789abcdef"]')
    s = load_settings(CONFIG)
    assert s.limits_max.allows_network("fetcher") and not s.limits_max.allows_network("other")
    assert s.connections.allowed_origins == ("https://flows.example",)
    assert (s.capacity.memory_mb, s.capacity.max_sandboxes) == (4096, 256)
    assert s.auth.admin_tokens == ("admin-0123456789abcdef",)


def test_capacity_memory_defaults_to_three_quarters_of_the_machine() -> None:
    from service.settings import machine_memory_mb

    assert Settings().capacity.memory_mb == max(256, machine_memory_mb() * 3 // 4)


def test_floats_stay_as_given() -> None:
    s = settings_from_mapping({"shutdown_grace_s": 0.5, "limits": {"timeout_s": 5, "cpus": 0.5}})
    assert (s.shutdown_grace_s, s.limits.timeout_s, s.limits.cpus) == (0.5, 5, 0.5)
    assert isinstance(s.limits.timeout_s, int)  # shown as 5 on the wire, not 5.0


def test_missing_file_is_one_line() -> None:
    with pytest.raises(SettingsError, match=r"^settings file not found: nowhere\.toml$"):
        load_settings("nowhere.toml")


@pytest.mark.parametrize(("host", "tokens", "anonymous", "refused"), [
    ("127.0.0.1", (), False, False),
    ("::1", (), False, False),
    ("localhost", (), False, False),
    ("0.0.0.0", (), False, True),
    ("0.0.0.0", ("t" * 16,), False, False),
    ("0.0.0.0", (), True, False),
])
def test_exposure(host: str, tokens: tuple, anonymous: bool, refused: bool) -> None:
    s = settings_from_mapping({"host": host, "auth": {"tokens": list(tokens),
                                                      "allow_anonymous": anonymous}})
    if refused:
        with pytest.raises(SettingsError, match=r"without auth\.tokens"):
            check_exposure(s)
    else:
        check_exposure(s)


# --- strictness: every unknown name is an error, all reported at once ---

TYPOS = """\
log_levl = "debug"
[defualt]
port = 1
[default]
log_levl = "debug"
[default.limits]
timeout = 3
[limits]
cpus = 1
[staging]
prot = 7000
"""


def test_every_unknown_name_in_the_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(TYPOS)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value).split("; ") == [
        "log_levl: key outside any table (put it under [default])",
        "[defualt]: unknown table (did you mean [default]?)",
        "[default] log_levl: unknown setting (did you mean log_level?)",
        "[default.limits] timeout: unknown key (did you mean timeout_s?)",
        "[limits]: unknown table (did you mean [default.limits]?)",
        "[staging] prot: unknown setting (did you mean port?)",  # environments are checked too
    ]


def test_unknown_service_variables_and_values_are_reported_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[default]\nport = "high"\n')
    monkeypatch.setenv("SERVICE_LOG_LEVL", "debug")
    monkeypatch.setenv("SERVICE_LIMITS__CPU", "2")
    monkeypatch.setenv("SERVICE_HOST__X", "2")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value).split("; ") == [
        "environment variable SERVICE_HOST__X: unknown key 'x' of host",
        "environment variable SERVICE_LIMITS__CPU: unknown key 'cpu' of limits "
        "(did you mean cpus?)",
        "environment variable SERVICE_LOG_LEVL: unknown setting (did you mean SERVICE_LOG_LEVEL?)",
        "host: expected a string, got {'X': 2}",
        "port: expected a number, got 'high'",
    ]


def test_service_env_must_name_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_ENV", "prod")
    with pytest.raises(SettingsError, match=r"^SERVICE_ENV=prod: the settings file has no "
                                            r"\[prod\] table$"):
        load_settings(CONFIG)


@pytest.mark.parametrize(("text", "said"), [
    ('[default]\nport = 5556\nport = 5557\n', "(at line 3, column 12) (key 'port')"),
    ('[default]\nhost = "x"\nport = \n', "(at line 3, column 8) (key 'port')"),
    ('[default.auth]\ntokens = secret-token-of-32-chars-long-aaaa\n', "(key 'tokens')")])
def test_a_toml_error_names_its_key_never_its_value(tmp_path: Path, text: str,
                                                    said: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value).endswith(said) and "secret" not in str(caught.value)


def test_a_broken_toml_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[default\n")
    with pytest.raises(SettingsError, match=r"^cannot read settings .*settings\.toml: "):
        load_settings(path)


# --- where relative paths resolve: the working folder (manifest.md) ---


@pytest.mark.parametrize("layout", ["config/settings.toml", "settings.toml", "deploy/conf.toml"])
def test_relative_paths_resolve_against_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """manifest.md: "Relative paths resolve against the current working directory", wherever
    the settings file is (they resolved against its folder: a settings file kept elsewhere
    read another project's manifests)."""
    path = tmp_path / layout
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[default]\nschema_roots = ["schemas", "/abs"]\ndeps_dir = "cache"\n')
    monkeypatch.setenv("SERVICE_MANIFEST_PATHS", '["actors"]')
    monkeypatch.chdir("/")
    s = load_settings(path)
    assert s.schema_roots == (Path("schemas"), Path("/abs"))
    assert s.manifest_paths == (Path("actors"),)
    assert s.deps_dir == Path("cache")
    rooted = load_settings(path, base=tmp_path)  # a file found from a folder below its root
    assert rooted.schema_roots == (tmp_path / "schemas", Path("/abs"))
    assert rooted.manifest_paths == (tmp_path / "actors",)
    assert rooted.deps_dir == tmp_path / "cache"


def test_without_a_file_relative_paths_stay_relative_to_the_working_folder() -> None:
    assert load_settings(None).manifest_paths == (Path("manifests"),)


def test_node_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "node"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert load_settings(None).sandbox.node == str(fake)
    monkeypatch.setenv("SERVICE_SANDBOX__NODE", "/opt/node/bin/node")  # a path is kept as given
    assert load_settings(None).sandbox.node == "/opt/node/bin/node"


def test_state_settings() -> None:
    from service.settings import StateSettings

    s = settings_from_mapping({"state": {"redis_url": "unix:///run/redis.sock", "ttl_s": 0,
                                         "ops_per_call": 5}})
    assert s.state == StateSettings(redis_url="unix:///run/redis.sock", ttl_s=0, ops_per_call=5)
    with pytest.raises(SettingsError, match=r"state.redis_url: must start with redis://"):
        settings_from_mapping({"state": {"redis_url": "http://example.invalid"}})
    with pytest.raises(SettingsError, match="ops_per_call: must be positive"):
        settings_from_mapping({"state": {"ops_per_call": 0}})
    with pytest.raises(SettingsError, match="must not be the cluster's Redis database"):
        settings_from_mapping({"state": {"redis_url": "redis://r:6379/0"},
                               "cluster": {"redis_url": "redis://r:6379/0"}})


@pytest.mark.parametrize(("state", "cluster", "other"), [
    ("redis://localhost:16392", "redis://127.0.0.1:16392/0", "redis://localhost:16392/1"),
    ("redis://user:pw@127.0.0.1/0", "redis://127.0.0.1:6379?db=0", "redis://127.0.0.1/1"),
    ("unix:///tmp/../tmp/r.sock", "unix:///tmp/r.sock?db=0", "unix:///tmp/r.sock?db=1"),
])
def test_the_clusters_database_written_another_way_is_refused_for_state(
        state: str, cluster: str, other: str) -> None:
    """The same database under another name: a state key could overwrite a cluster key."""
    with pytest.raises(SettingsError, match="must not be the cluster's Redis database"):
        settings_from_mapping({"state": {"redis_url": state}, "cluster": {"redis_url": cluster}})
    allowed = settings_from_mapping({"state": {"redis_url": other},
                                     "cluster": {"redis_url": cluster}})
    assert allowed.state.redis_url == other


def test_state_redis_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_STATE__REDIS_URL", "redis://redis:6379/0")
    assert load_settings(CONFIG).state.redis_url == "redis://redis:6379/0"


def test_busy_polling_is_on_by_default_and_zero_turns_it_off() -> None:
    assert Settings().busy_poll_us == 50
    assert settings_from_mapping({"busy_poll_us": 0}).busy_poll_us == 0
    for bad, problem in ((-1, "must be 0 or more"), (1001, "must be 0-1000"),
                         (True, "expected a number")):
        with pytest.raises(SettingsError, match=f"busy_poll_us: {problem}"):
            settings_from_mapping({"busy_poll_us": bad})


# --- isolated: dynaconf in a child process, for the long-running commands ---


@pytest.mark.parametrize("env", [{}, {"SERVICE_ENV": "production"},
                                 {"SERVICE_PORT": "6001", "SERVICE_LIMITS__TIMEOUT_S": "2.5"}])
def test_isolated_reading_gives_the_same_settings(monkeypatch: pytest.MonkeyPatch,
                                                  env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings(CONFIG, isolated=True, port=None) == load_settings(CONFIG)
    assert load_settings(CONFIG, isolated=True, port=7000).port == 7000


@pytest.mark.parametrize("contents", ["[default\n", "[default]\nport = 'x'\n"])
def test_isolated_reading_gives_the_same_errors(tmp_path: Path, contents: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(contents)
    with pytest.raises(SettingsError) as in_process:
        load_settings(path)
    with pytest.raises(SettingsError) as isolated:
        load_settings(path, isolated=True)
    assert str(isolated.value) == str(in_process.value)
    with pytest.raises(SettingsError, match=r"^settings file not found: .*nowhere\.toml$"):
        load_settings(tmp_path / "nowhere.toml", isolated=True)


def test_isolated_reading_leaves_dynaconf_out_of_the_process() -> None:
    code = ("import sys; from service.settings import load_settings; "
            f"load_settings({str(CONFIG)!r}, isolated=True); print('dynaconf' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=CONFIG.parents[1])
    assert done.stdout.strip() == "False"
