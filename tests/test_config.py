"""Settings: reading PYRO_COMPUTE_* variables, converting them, and rejecting what cannot be used."""
from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyro_compute.config import DEFAULT_NS, ENV_PREFIX, Settings, is_loopback, parse_address, require_secret
from pyro_compute.errors import ComputeError, ConfigError


def test_config_error_is_a_value_error_and_a_compute_error() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, ComputeError)


def test_empty_environment_gives_the_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.ns == DEFAULT_NS and s.ns_address == ("127.0.0.1", 9090)
    assert s.hmac_bytes is None
    assert s.allowed_modules == ()
    assert s.discovery_interval == 2.0


def test_values_are_converted_to_the_type_of_their_default() -> None:
    s = Settings.from_env({
        "PYRO_COMPUTE_NS": "10.0.0.5:9999", "PYRO_COMPUTE_HMAC_KEY": "s3cret",
        "PYRO_COMPUTE_CALL_TIMEOUT": "2.5", "PYRO_COMPUTE_MAX_RETRIES": "7",
        "PYRO_COMPUTE_WORKER_WAIT": "1e1", "PYRO_COMPUTE_MAX_MESSAGE_SIZE": " 1024 ",
        "PYRO_COMPUTE_DISCOVERY_INTERVAL": "3", "PYRO_COMPUTE_ALLOW_MODULES": "a, b,,c ",
    })
    assert s.ns_address == ("10.0.0.5", 9999)
    assert s.hmac_key == "s3cret" and s.hmac_bytes == b"s3cret"
    assert s.call_timeout == 2.5 and type(s.call_timeout) is float
    assert s.max_retries == 7 and type(s.max_retries) is int
    assert s.worker_wait == 10.0
    assert s.max_message_size == 1024
    assert s.discovery_interval == 3.0 and type(s.discovery_interval) is float
    assert s.allowed_modules == ("a", "b", "c")


@pytest.mark.parametrize("key, value", [
    ("PYRO_COMPUTE_MAX_RETRIES", "three"), ("PYRO_COMPUTE_MAX_RETRIES", "2.5"),
    ("PYRO_COMPUTE_MAX_RETRIES", ""), ("PYRO_COMPUTE_CALL_TIMEOUT", "soon"),
    ("PYRO_COMPUTE_MAX_MESSAGE_SIZE", "1MB"), ("PYRO_COMPUTE_DISCOVERY_INTERVAL", "2s"),
])
def test_values_of_the_wrong_type_are_rejected_naming_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Settings.from_env({key: value})


@pytest.mark.parametrize("key", ["PYRO_COMPUTE_NSS", "PYRO_COMPUTE_HMAC", "PYRO_COMPUTE_", "PYRO_COMPUTE_hmac_keyy"])
def test_unknown_variables_are_rejected_listing_the_known_ones(key: str) -> None:
    with pytest.raises(ConfigError, match="unknown setting") as info:
        Settings.from_env({key: "1"})
    assert key in str(info.value)
    assert "PYRO_COMPUTE_NS" in str(info.value) and "PYRO_COMPUTE_DISCOVERY_INTERVAL" in str(info.value)


def test_variable_names_are_case_insensitive_after_the_prefix() -> None:
    assert Settings.from_env({"PYRO_COMPUTE_max_retries": "9"}).max_retries == 9


def test_other_variables_are_ignored() -> None:
    s = Settings.from_env({"PYRO_HMAC_KEY": "x", "PYRO_NS_PORT": "1", "PATH": "/bin", "pyro_compute_ns": "x"})
    assert s == Settings()


def test_overrides_win_over_the_environment_and_none_means_not_given() -> None:
    env = {"PYRO_COMPUTE_NS": "a:1", "PYRO_COMPUTE_MAX_RETRIES": "5"}
    s = Settings.from_env(env, ns="b:2", max_retries=None)
    assert (s.ns, s.max_retries) == ("b:2", 5)


def test_unknown_overrides_are_rejected() -> None:
    with pytest.raises(ConfigError, match="nss"):
        Settings.from_env({}, nss="a:1")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_MAX_RETRIES", "11")
    assert Settings.from_env().max_retries == 11
    monkeypatch.setenv("PYRO_COMPUTE_TYPO", "1")
    with pytest.raises(ConfigError, match="PYRO_COMPUTE_TYPO"):
        Settings.from_env()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ns = "x:1"  # type: ignore[misc]


def test_as_env_names_every_field() -> None:
    env = Settings().as_env()
    assert set(env) == {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert all(isinstance(v, str) for v in env.values())


env_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)


def _not_wildcard(host: str) -> bool:
    try:
        Settings(host=host)
        return True
    except ConfigError:  # 0.0.0.0, ::, ... are refused; test_a_wildcard_host_is_refused covers them
        return False


host_text = st.one_of(env_text, st.sampled_from(["::", "0.0.0.0", "[::]", " ", ""])).filter(_not_wildcard)


@given(st.builds(
    Settings, ns=env_text, hmac_key=env_text, hmac_key_file=env_text, host=host_text,
    call_timeout=st.floats(allow_nan=False), max_retries=st.integers(-10, 10**6),
    worker_wait=st.floats(allow_nan=False), max_message_size=st.integers(0, 2**40),
    allow_modules=env_text, discovery_interval=st.floats(allow_nan=False)))
def test_as_env_round_trips_through_from_env(s: Settings) -> None:
    assert Settings.from_env(s.as_env()) == s


# -- parse_address -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9090", ("127.0.0.1", 9090)), ("localhost:0", ("localhost", 0)),
    ("example.org:65535", ("example.org", 65535)), ("[::1]:9090", ("::1", 9090)),
    ("node-7.lan:00080", ("node-7.lan", 80)),
])
def test_parse_address_accepts_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["localhost", ":9090", "host:", "host:port", "host:65536", "host:-1",
                                  "host: 9090", "host:9090 ", "host:1e3", "host:\u00b2", "host:\u0663",
                                  "", ":"])
def test_parse_address_rejects_anything_else_with_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_address(text)


@given(st.text(alphabet=string.printable + "\u00b2\u0663\u00bd", max_size=12))
def test_parse_address_raises_only_config_error(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ConfigError:
        return
    assert host and 0 <= port <= 65535


def test_ns_address_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="^ns must be HOST:PORT"):
        Settings(ns="nohost").ns_address


# -- HMAC key ------------------------------------------------------------------------------------

def test_hmac_key_file_first_line_is_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  s3cret-\u00e9\t\nsecond line\n", encoding="utf-8")
    s = Settings.from_env({"PYRO_COMPUTE_HMAC_KEY_FILE": str(key_file)})
    assert s.hmac_bytes == "s3cret-\u00e9".encode()


def test_hmac_key_wins_over_the_key_file(tmp_path: Path) -> None:
    s = Settings(hmac_key="direct", hmac_key_file=str(tmp_path / "missing"))
    assert s.hmac_bytes == b"direct"


def test_missing_hmac_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(ConfigError, match="cannot read the HMAC key file") as info:
        Settings(hmac_key_file=str(path)).hmac_bytes
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "\n", "   \nkey on the second line\n"])
def test_empty_hmac_key_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(ConfigError, match="is empty"):
        Settings(hmac_key_file=str(key_file)).hmac_bytes


def test_hmac_key_file_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Settings(hmac_key_file=str(tmp_path)).hmac_bytes


@pytest.mark.parametrize("value", ["", " ", "\t"])
def test_an_empty_host_means_the_loopback_default(value: str) -> None:
    assert Settings.from_env({"PYRO_COMPUTE_HOST": value}).host == "127.0.0.1"
    assert Settings(host=value).host == "127.0.0.1"


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0"])
def test_a_wildcard_host_is_refused_saying_what_to_give(value: str) -> None:
    with pytest.raises(ConfigError, match="every interface.*PYRO_COMPUTE_HOST=10.0.0.7"):
        Settings.from_env({"PYRO_COMPUTE_HOST": value})


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("10.0.0.7", False),
                                            ("192.168.1.1", False), ("no-such-host.invalid", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_require_secret() -> None:
    assert require_secret(Settings(hmac_key="k"), False, "x", "10.0.0.7") == b"k"
    assert require_secret(Settings(), True, "x", "127.0.0.1") is None
    with pytest.raises(ConfigError, match="(?s)x needs a shared secret.*token_hex.*--insecure"):
        require_secret(Settings(), False, "x", "127.0.0.1")
    with pytest.raises(ConfigError, match="(?s)only on a loopback address.*not .10.0.0.7."):
        require_secret(Settings(), True, "x", "10.0.0.7")
