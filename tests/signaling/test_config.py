"""``parley serve`` options: one table gives every flag a ``PARLEY_*`` variable and a TOML key;
command line > environment > file > default; ``--print-config`` masks secrets; bad files,
keys and values are refused with a message naming where they came from."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parley.signaling import cli, options
from parley.signaling.options import SERVE_OPTIONS, ConfigError, Option


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs built here keep their generated secrets in ./parley-data (the default, since
    these tests resolve without the environment): let that be a temporary folder."""
    monkeypatch.chdir(tmp_path)


# the flags and environment variables parley serve had before the table: a contract
LEGACY_FLAGS = {
    "--host", "--port", "--public-url", "--api-key", "--token-secret", "--token-ttl",
    "--max-participants", "--media-address", "--media-ports", "--turn-port", "--turn-tls-port",
    "--turn-listen", "--turn-public-host", "--turn-relay-ports", "--turn-transports",
    "--tls-cert", "--tls-key", "--turn-secret", "--turn-external-url",
    "--turn-external-username", "--turn-external-credential", "--ice-transport-policy",
    "--log-level",
}  # fmt: skip
LEGACY_ENV = {
    "--host": "PARLEY_HOST",
    "--port": "PARLEY_PORT",
    "--public-url": "PARLEY_PUBLIC_URL",
    "--api-key": "PARLEY_API_KEY",
    "--token-secret": "PARLEY_TOKEN_SECRET",
    "--turn-port": "PARLEY_TURN_PORT",
    "--tls-cert": "PARLEY_TLS_CERT",
    "--tls-key": "PARLEY_TLS_KEY",
    "--turn-secret": "PARLEY_TURN_SECRET",
    "--turn-external-username": "PARLEY_TURN_USERNAME",
    "--turn-external-credential": "PARLEY_TURN_CREDENTIAL",
    "--ice-transport-policy": "PARLEY_ICE_TRANSPORT_POLICY",
    "--log-level": "PARLEY_LOG_LEVEL",
}
SECRETS = {
    "api_key": "the-api-key-value",
    "token_secret": "the-token-secret-value",
    "turn_secret": "the-turn-secret-value",
    "turn_external_credential": "the-turn-credential-value",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(argv)


def sample(option: Option, variant: int) -> tuple[str, Any]:
    """A valid value for ``option`` as text, and as the value it resolves to."""
    if option.choices:
        text: str = option.choices[variant % len(option.choices)]
        value: Any = text
    elif option.kind is options.INTEGER:
        text, value = str(1000 + variant), 1000 + variant
    elif option.kind is options.NUMBER:
        text, value = f"{2.5 + variant}", 2.5 + variant
    elif option.kind is options.BOOLEAN:
        value = variant % 2 == 0
        text = "true" if value else "false"
    elif option.kind is options.ADDRESS:
        text = value = f"127.0.0.{10 + variant}"
    elif option.kind is options.PORT_RANGE:
        text, value = f"4{variant}000-4{variant}999", (int(f"4{variant}000"), int(f"4{variant}999"))
    else:
        text = value = f"value-{variant}"
    return text, [value] if option.many else value


def cli_args(option: Option, text: str) -> list[str]:
    """The command line that sets ``option`` to ``text`` (a switch is ``--x`` / ``--no-x``)."""
    if option.kind is options.BOOLEAN:
        return [option.flag if text == "true" else "--no-" + option.flag.removeprefix("--")]
    return [option.flag, text]


def toml_text(values: dict[str, str]) -> str:
    return "".join(f"{k} = {v}\n" for k, v in values.items())


def test_every_legacy_flag_and_environment_variable_is_kept() -> None:
    assert LEGACY_FLAGS <= {o.flag for o in SERVE_OPTIONS}
    by_flag = {o.flag: o for o in SERVE_OPTIONS}
    for flag, env in LEGACY_ENV.items():
        assert by_flag[flag].env_var == env
    # the others follow the rule: PARLEY_ + the file key in capitals
    assert by_flag["--turn-relay-ports"].env_var == "PARLEY_TURN_RELAY_PORTS"
    assert by_flag["--turn-relay-ports"].key == "turn_relay_ports"
    assert len({o.env_var for o in SERVE_OPTIONS}) == len(SERVE_OPTIONS)


@pytest.mark.parametrize("option", SERVE_OPTIONS, ids=lambda o: o.key)
def test_each_option_is_a_flag_an_environment_variable_and_a_file_key(
    option: Option, tmp_path: Path
) -> None:
    cli_text, cli_value = sample(option, 1)
    env_text, env_value = sample(option, 2)
    file_text, file_value = sample(option, 3)
    config = tmp_path / "parley.toml"
    config.write_text(toml_text({option.key: f'"{file_text}"'}))
    flags = [*cli_args(option, cli_text), "--config", str(config)]
    env = {option.env_var: env_text}

    def value(argv: list[str], environ: dict[str, str]) -> tuple[Any, str]:
        resolved = options.resolve(parse(argv), environ)
        return resolved.values[option.key], resolved.sources[option.key]

    assert value(flags, env) == (cli_value, "cli")
    rest = flags[-2:]
    assert value(rest, env) == (env_value, f"env {option.env_var}")
    assert value(rest, {}) == (file_value, f"file {config}")
    assert value(rest, {option.env_var: ""}) == (file_value, f"file {config}")
    assert value([], {}) == (option.default, "default")


def test_precedence_is_resolved_per_option(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(toml_text({"port": "9001", "host": '"127.0.0.3"', "token_ttl": "60"}))
    resolved = options.resolve(
        parse(["--port", "9003", "--config", str(config)]),
        {"PARLEY_PORT": "9002", "PARLEY_HOST": "127.0.0.2"},
    )
    assert resolved.values["port"] == 9003  # flag over env over file
    assert resolved.values["host"] == "127.0.0.2"  # env over file
    assert resolved.values["token_ttl"] == 60  # file over default
    assert resolved.values["max_participants"] == 4  # default


def test_file_values_take_native_toml_types(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        toml_text(
            {
                "media_address": '["127.0.0.1", "::1"]',
                "media_ports": "[40000, 40999]",
                "turn_relay_ports": '"50000-50999"',
                "turn_external_url": '"turn:turn.example.com:3478?transport=tcp"',
            }
        )
    )
    values = options.resolve({"config": str(config)}, {}).values
    assert values["media_address"] == ["127.0.0.1", "::1"]
    assert values["media_ports"] == (40000, 40999)
    assert values["turn_relay_ports"] == (50000, 50999)
    assert values["turn_external_url"] == ["turn:turn.example.com:3478?transport=tcp"]


def test_repeatable_options_are_comma_separated_in_the_environment() -> None:
    values = options.resolve({}, {"PARLEY_MEDIA_ADDRESS": "127.0.0.1, 10.0.0.5"}).values
    assert values["media_address"] == ["127.0.0.1", "10.0.0.5"]


def test_the_config_file_can_come_from_parley_config(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text("port = 9009\n")
    assert options.resolve({}, {"PARLEY_CONFIG": str(config)}).values["port"] == 9009


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("prot = 8080\n", "unknown key 'prot' (did you mean 'port'?)"),
        ("[turn]\nport = 3478\n", "unknown key 'turn'"),
        ('port = "eighty"\n', "port: expected an integer, got 'eighty'"),
        ("port = true\n", "port: expected an integer, got True"),
        ('turn_listen = "localhost"\n', "turn_listen: not an IP address: 'localhost'"),
        ("media_ports = [1, 2, 3]\n", "media_ports: expected [LOW, HIGH], got [1, 2, 3]"),
        ('ice_transport_policy = "turn"\n', "expected one of all, relay, got 'turn'"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_a_bad_key_or_value_in_the_file_is_a_clear_error(
    body: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(body)
    with pytest.raises(ConfigError) as error:
        options.resolve({"config": str(config)}, {})
    assert str(error.value).startswith(f"{config}: ")
    assert message in str(error.value)


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^PARLEY_TURN_PORT: expected an integer, got 'x'$"):
        options.resolve({}, {"PARLEY_TURN_PORT": "x"})


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file .*nope.toml"):
        options.resolve({"config": str(tmp_path / "nope.toml")}, {})


def test_parley_serve_refuses_a_bad_file_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "parley.toml"
    config.write_text("max_participant = 3\n")
    assert cli.main(["serve", "--config", str(config), "--print-config"]) == 2
    assert "unknown key 'max_participant' (did you mean 'max_participants'?)" in (
        capsys.readouterr().err
    )
    config.write_text("max_participants = 100\n")  # parses, but the service config refuses it
    assert cli.main(["serve", "--config", str(config), "--print-config"]) == 2
    assert "max participants must be between 2 and 32" in capsys.readouterr().err


def test_print_config_masks_every_secret_and_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("PARLEY_"):
            monkeypatch.delenv(name)
    config = tmp_path / "parley.toml"
    config.write_text(toml_text({"token_secret": f'"{SECRETS["token_secret"]}"', "port": "9100"}))
    monkeypatch.setenv("PARLEY_TURN_SECRET", SECRETS["turn_secret"])
    monkeypatch.setenv("PARLEY_TURN_CREDENTIAL", SECRETS["turn_external_credential"])
    argv = ["serve", "--config", str(config), "--api-key", SECRETS["api_key"]]
    assert cli.main([*argv, "--turn-external-username", "bob", "--print-config"]) == 0
    out = capsys.readouterr().out
    for secret in SECRETS.values():
        assert secret not in out
    printed = tomllib.loads(out)
    for key in SECRETS:
        assert printed[key] == options.MASK
    assert printed["port"] == 9100
    assert printed["turn_external_username"] == "bob"
    assert 'api_key = "********"  # cli' in out
    assert 'turn_secret = "********"  # env PARLEY_TURN_SECRET' in out
    assert f'token_secret = "********"  # file {config}' in out
    assert "port = 9100  # file" in out
    # the printed file is a valid configuration file itself (secrets aside)
    again = tmp_path / "printed.toml"
    again.write_text(out)
    resolved = options.resolve({"config": str(again)}, {})
    assert resolved.values["port"] == 9100
    assert resolved.values["media_address"] == ["127.0.0.1"]


def test_print_config_says_which_secrets_will_be_generated(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PARLEY_API_KEY", raising=False)
    assert cli.main(["serve", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# api_key = (generated at start)  # default" in out
    assert "pk_" not in out


def test_the_resolved_options_build_the_service_config(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        toml_text(
            {
                "api_key": '"k-file"',
                "media_address": '["127.0.0.1", "127.0.0.2"]',
                "turn_port": "0",
                "ice_transport_policy": '"relay"',
            }
        )
    )
    resolved = cli.resolve_serve_options(
        parse(["--config", str(config), "--max-participants", "6"]),
        {"PARLEY_PUBLIC_URL": "https://support.example.com"},
    )
    service, notes = cli.config_from_args(resolved.namespace())
    assert service.api_key == "k-file" and notes == []
    assert service.media.addresses == ("127.0.0.1", "127.0.0.2")
    assert service.turn.enabled is False
    assert service.ice_transport_policy == "relay"
    assert service.max_participants == 6
    assert service.base_url == "https://support.example.com"


def test_the_sample_files_in_the_docs_are_valid_configurations(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    sample_file = options.read_file(str(repo / "docs" / "parley.toml"))
    assert sample_file["media_ports"] == (40000, 40999)
    readme = (repo / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    readme_sample = tmp_path / "readme-parley.toml"
    readme_sample.write_text(block)
    assert options.read_file(str(readme_sample))["turn_tls_port"] == 443


def test_the_docs_sample_names_every_key() -> None:
    """docs/parley.toml shows every option, set or commented out (``# key = ...``)."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "docs" / "parley.toml").read_text()
    keys = {
        line.lstrip("# ").split("=", 1)[0].strip()
        for line in text.splitlines()
        if "=" in line and not line.startswith("#   ")
    }
    missing = [o.key for o in SERVE_OPTIONS if o.key not in keys]
    assert not missing, f"add to docs/parley.toml: {missing}"


@pytest.mark.parametrize("option", [o for o in SERVE_OPTIONS if o.field], ids=lambda o: o.field)
def test_each_option_with_a_field_lands_in_the_service_config(option: Option) -> None:
    text, value = sample(option, 1)
    if option.key == "turn_port":
        text, value = "3479", 3479
    if option.key == "turn_external_url":
        text, value = "turn:turn.example.com:3478", ["turn:turn.example.com:3478"]
    if option.key == "public_url":
        text = value = "https://support.example.com"
    if option.key == "max_participants":
        text, value = "5", 5
    if option.key == "workers":  # 1 to 64; above 1 with the store (--data-dir, the default)
        text, value = "2", 2
    extra: list[str] = []
    if option.key == "redis_url":  # a cluster shares the PostgreSQL store
        text = value = "redis://127.0.0.1:6379/0"
        extra = ["--database-url", "postgresql://parley@127.0.0.1/parley"]
    if option.key in ("tls_cert", "tls_key"):  # they go together
        argv = ["--tls-cert", "cert.pem", "--tls-key", "key.pem"]
        text = value = f"{option.key.split('_')[1]}.pem"
    else:
        argv = cli_args(option, text)
    resolved = options.resolve(parse([*argv, *extra, "--api-key", "k"]), {})
    service, _ = cli.config_from_args(resolved.namespace())
    target: Any = service
    for name in option.field.split("."):
        target = getattr(target, name)
    assert target == (tuple(value) if isinstance(value, list) else value)


def test_switches_and_numbers_for_options_added_later(tmp_path: Path) -> None:
    table = (
        Option("--recording", "record sessions", options.BOOLEAN, default=False),
        Option("--grace", "seconds", options.NUMBER, default=1.5),
    )

    def values(argv: list[str], env: dict[str, str], body: str = "") -> dict[str, Any]:
        parser = argparse.ArgumentParser()
        options.add_arguments(parser, table)
        if body:
            (tmp_path / "p.toml").write_text(body)
            argv = [*argv, "--config", str(tmp_path / "p.toml")]
        return dict(options.resolve(parser.parse_args(argv), env, table).values)

    assert values([], {}) == {"recording": False, "grace": 1.5}
    assert values(["--recording", "--grace", "2"], {}) == {"recording": True, "grace": 2.0}
    assert values(["--no-recording"], {"PARLEY_RECORDING": "yes"})["recording"] is False
    assert values([], {"PARLEY_RECORDING": "off", "PARLEY_GRACE": "0.25"}) == {
        "recording": False,
        "grace": 0.25,
    }
    assert values([], {}, "recording = true\ngrace = 3\n") == {"recording": True, "grace": 3}
    with pytest.raises(ConfigError, match="PARLEY_RECORDING: expected true or false, got 'maybe'"):
        values([], {"PARLEY_RECORDING": "maybe"})
    with pytest.raises(ConfigError, match="recording: expected true or false, got 1"):
        values([], {}, "recording = 1\n")
    rendered = options.render(options.Resolved({"recording": True, "grace": 0.5}, {}), table)
    assert "recording = true  # default" in rendered and "grace = 0.5  # default" in rendered


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (lambda: Option("-x", "short"), "option flags are --lower-case"),
        (lambda: Option("--Port", "caps"), "option flags are --lower-case"),
        (lambda: Option("--x", "list", default=["a"]), "a repeatable option has a list default"),
        (lambda: Option("--x", "pick", default="c", choices=("a", "b")), "not one of the choices"),
    ],
)
def test_a_malformed_row_is_refused_when_the_table_is_built(
    row: Callable[[], Option], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        row()
