"""Configuration: the shipped file matches D2, and every bad key is named in the error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config import (
    PACKAGE_CONFIG_DIR,
    CountryRules,
    DemoUser,
    Settings,
    load_settings,
)
from gateway.errors import ConfigError
from gateway.rules.rating import HEADER

DEFAULT_CONFIG = PACKAGE_CONFIG_DIR / "callgate.toml"
EU = [
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
]

MINIMAL = """
[rate_decks]
USD = "rates/USD.csv"

[plans.domestic]
outbound = "domestic"
domestic_minutes = { US = 3000, "*" = 1200 }
"""


def write_config(directory: Path, text: str) -> Path:
    """A config file with a one-row USD deck next to it."""
    (directory / "rates").mkdir(exist_ok=True)
    deck = ",".join(HEADER) + "\n1,NANP,outbound,0.0120,0.0100,60,60\n"
    (directory / "rates" / "USD.csv").write_text(deck, encoding="utf-8")
    path = directory / "callgate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(directory: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(env or {}, write_config(directory, text))


def config_error(directory: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(directory, text, env)
    return caught.value


# --- the shipped configuration ---------------------------------------------------------------


def test_default_config_matches_d2() -> None:
    settings = load_settings({}, DEFAULT_CONFIG)
    plans = settings.plans
    assert set(plans) == {
        "none",
        "domestic",
        "domestic_120",
        "domestic_240",
        "international",
        "pay_as_you_go",
    }
    assert plans["none"].outbound == "none"
    assert not plans["none"].domestic_minutes and not plans["none"].international_minutes
    domestic = plans["domestic"]
    assert domestic.outbound == "domestic"
    for country in ("US", "PR", "CA"):
        assert domestic.domestic_minutes_for(country) == 3000
    for country in ["GB", *EU, "JP", "AU", "MX", "CH"]:
        assert domestic.domestic_minutes_for(country) == 1200, country
    assert domestic.international_minutes_for("US") == 0
    for plan_id, minutes in (("domestic_120", 120), ("domestic_240", 240)):
        assert plans[plan_id].outbound == "domestic"
        assert {plans[plan_id].domestic_minutes_for(c) for c in ("US", "GB", "FR", "JP")} == {
            minutes
        }
        assert plans[plan_id].international_minutes_for("US") == 0
    international = plans["international"]
    assert international.outbound == "international"
    assert international.domestic_minutes == domestic.domestic_minutes
    assert {international.international_minutes_for(c) for c in ("US", "CA", "GB", "JP")} == {600}
    payg = plans["pay_as_you_go"]
    assert payg.outbound == "international"
    assert payg.domestic_minutes_for("US") == payg.international_minutes_for("US") == 0


def test_default_config_zones_countries_decks_and_demo() -> None:
    settings = load_settings({}, DEFAULT_CONFIG)
    assert settings.zones == (frozenset({"US", "PR", "CA"}),)
    assert settings.is_domestic("US", "CA") and settings.is_domestic("CA", "US")
    assert settings.is_domestic("PR", "US")
    assert not settings.is_domestic("US", "JM")  # other +1 countries are international
    assert not settings.is_domestic("GB", "FR")
    assert settings.zone_of("FR") == frozenset({"FR"})
    assert settings.rules_for("GB") == CountryRules(
        allow_shared_cost=True, allowed_prefixes=("4484", "4487"))
    assert settings.rules_for("FR") == CountryRules(allow_premium_rate=True)
    assert settings.rules_for("DE") == CountryRules()
    assert {"881", "882", "883", "979"} <= set(settings.blocked_prefixes)
    assert set(settings.rate_decks) == {"USD", "EUR", "GBP"}
    assert all(len(deck) >= 40 for deck in settings.rate_decks.values())
    assert settings.default_currency == "USD" and settings.default_timezone == "UTC"
    assert settings.tokens == ()
    demo = settings.demo_tenant
    assert demo is not None
    assert (demo.id, demo.name, demo.currency, demo.timezone) == ("demo", "Demo Corp", "USD", "UTC")
    assert demo.credits == "10.00" and demo.credits_micro == 10_000_000
    assert demo.toll_free_numbers == ("+18005550199",)
    assert demo.users == (
        DemoUser("alice", "US", "domestic", ("+12125550100",)),
        DemoUser("bob", "CA", "international", ("+14165550111",)),
        DemoUser("carol", "GB", "domestic_120", ("+442071838750",)),
        DemoUser("dave", "US", "none", (), dial_out="none"),
    )


def test_defaults_without_environment() -> None:
    settings = load_settings({}, DEFAULT_CONFIG)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.redis_url is None and settings.database_url is None
    assert settings.data_dir == Path("var")
    assert settings.database_url_effective == "sqlite:///var/ledger.db"
    assert settings.operator_token is None
    assert (settings.grant_seconds, settings.clock_skew_seconds) == (300, 300)
    assert settings.workers >= 1
    assert (settings.partitions, settings.redis_timeout_ms) == (64, 100)
    assert (settings.reaper_grace_seconds, settings.call_retention_seconds) == (60, 86_400)


def test_config_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config/ here: falls back to the package's config/
    assert len(load_settings({}).plans) == 6
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config", MINIMAL)  # ./config/callgate.toml now wins
    assert set(load_settings({}).plans) == {"domestic"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write_config(elsewhere, MINIMAL.replace("1200", "999"))
    by_env = load_settings({"CALLGATE_CONFIG": str(path)})
    assert by_env.plans["domestic"].domestic_minutes_for("FR") == 999


@pytest.mark.parametrize("name", ["missing.toml", "callgate.yaml"])
def test_bad_config_path_names_the_variable(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"CALLGATE_CONFIG": str(tmp_path / name)})
    assert caught.value.key == "CALLGATE_CONFIG"


# --- environment variables ---------------------------------------------------------------------


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    env = {
        "CALLGATE_HTTP_HOST": "0.0.0.0",
        "CALLGATE_HTTP_PORT": "9000",
        "CALLGATE_REDIS_URL": "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        "CALLGATE_DATABASE_URL": "postgresql://callgate:secret@db/callgate",
        "CALLGATE_DATA_DIR": "/srv/callgate",
        "CALLGATE_OPERATOR_TOKEN": "bootstrap-token-Zx81qWe7RtY5",
        "CALLGATE_GRANT_SECONDS": "120",
        "CALLGATE_CLOCK_SKEW_SECONDS": "30",
        "CALLGATE_WORKERS": "3",
        "CALLGATE_PARTITIONS": "128",
        "CALLGATE_REDIS_TIMEOUT_MS": "50",
        "CALLGATE_REAPER_GRACE_SECONDS": "10",
    }
    text = 'http_port = 8081\ngrant_seconds = 60\nredis_url = "redis://file:6379"\n' + MINIMAL
    settings = load(tmp_path, text, env)
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 9000)
    assert settings.redis_url == env["CALLGATE_REDIS_URL"]
    assert settings.database_url_effective == env["CALLGATE_DATABASE_URL"]
    assert settings.data_dir == Path("/srv/callgate")
    assert settings.operator_token == "bootstrap-token-Zx81qWe7RtY5"
    assert (settings.grant_seconds, settings.clock_skew_seconds, settings.workers) == (120, 30, 3)
    assert (settings.partitions, settings.redis_timeout_ms) == (128, 50)
    assert settings.reaper_grace_seconds == 10
    # Secrets stay out of repr(), hence out of logs.
    assert "secret" not in repr(settings) and "bootstrap-token" not in repr(settings)


@pytest.mark.parametrize(("token", "bits"), [
    ("0123456789abcdef" * 2, 128),  # 32 hex digits: 4 bits each
    ("0123456789ABCDEF" * 2, 128),
    ("Z" * 22, 132),  # 22 characters of anything else: 6 bits each
    ("cg_" + "x" * 19, 132),
    ("!#$%&'()*+,-./:;<=>?@[]", 138),
])
def test_operator_token_of_128_bits_is_accepted(tmp_path: Path, token: str, bits: int) -> None:
    from gateway.config import token_bits

    assert token_bits(token) == bits
    assert load(tmp_path, MINIMAL, {"CALLGATE_OPERATOR_TOKEN": token}).operator_token == token


def test_generated_operator_tokens_pass() -> None:
    """What the error message and the docs tell the operator to run always passes."""
    import secrets

    from gateway.config import OPERATOR_TOKEN_BITS_MIN, token_bits

    for _ in range(200):
        for token in (secrets.token_urlsafe(16), secrets.token_urlsafe(32),
                      secrets.token_hex(16)):
            assert token_bits(token) >= OPERATOR_TOKEN_BITS_MIN, token


@pytest.mark.parametrize(("token", "message"), [
    ("0123456789abcdef0123456789abcde", r"at least 128 bits.*31 characters"),  # 124 bits
    ("bootstrap-token", r"at least 128 bits"),
    ("Z" * 21, r"at least 128 bits"),  # 126 bits
    ("correct horse battery staple", r"visible ASCII"),
    ("x" * 30 + "\n", r"visible ASCII"),
    ("x" * 30 + "\x00", r"visible ASCII"),
    ("caf\u00e9" * 10, r"visible ASCII"),
])
def test_weak_operator_token_refuses_to_start(tmp_path: Path, token: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, MINIMAL, {"CALLGATE_OPERATOR_TOKEN": token})
    assert info.value.key == "CALLGATE_OPERATOR_TOKEN"
    assert "CALLGATE_OPERATOR_TOKEN" in str(info.value)
    assert token.strip() not in str(info.value)  # the message never echoes the token


def test_file_values_apply_without_environment(tmp_path: Path) -> None:
    text = 'http_port = 8081\ndata_dir = "/data"\nredis_url = "unix:///run/redis.sock"\n' + MINIMAL
    settings = load(tmp_path, text)
    assert settings.http_port == 8081
    assert settings.redis_url == "unix:///run/redis.sock"
    assert settings.database_url_effective == "sqlite:////data/ledger.db"


def test_empty_optional_variables_mean_unset(tmp_path: Path) -> None:
    text = 'redis_url = "redis://file:6379"\n' + MINIMAL
    settings = load(tmp_path, text, {"CALLGATE_REDIS_URL": "", "CALLGATE_OPERATOR_TOKEN": ""})
    assert settings.redis_url is None
    assert settings.operator_token is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CALLGATE_HTTP_PORT", "abc"),
        ("CALLGATE_HTTP_PORT", " 8080"),
        ("CALLGATE_HTTP_PORT", "8_080"),
        ("CALLGATE_HTTP_PORT", "-1"),
        ("CALLGATE_HTTP_PORT", "70000"),
        ("CALLGATE_HTTP_PORT", ""),
        ("CALLGATE_GRANT_SECONDS", "0"),
        ("CALLGATE_GRANT_SECONDS", "86401"),
        ("CALLGATE_GRANT_SECONDS", "1.5"),
        ("CALLGATE_CLOCK_SKEW_SECONDS", "\uff11"),  # FULLWIDTH DIGIT ONE
        ("CALLGATE_WORKERS", "0"),
        ("CALLGATE_PARTITIONS", "0"),
        ("CALLGATE_REDIS_TIMEOUT_MS", "0"),
        ("CALLGATE_REAPER_GRACE_SECONDS", "x"),
        ("CALLGATE_HTTP_HOST", " "),
        ("CALLGATE_DATA_DIR", ""),
        ("CALLGATE_REDIS_URL", "http://localhost:6379"),
        ("CALLGATE_REDIS_URL", "redis://"),
        ("CALLGATE_REDIS_URL", "localhost:6379"),
        ("CALLGATE_DATABASE_URL", "mysql://db/callgate"),
        ("CALLGATE_DATABASE_URL", "sqlite:///"),
        ("CALLGATE_DATABASE_URL", "postgres://db/callgate"),
    ],
)
def test_bad_environment_variable_is_named(tmp_path: Path, variable: str, value: str) -> None:
    error = config_error(tmp_path, MINIMAL, {variable: value})
    assert error.key == variable
    assert variable in str(error)


def test_url_errors_do_not_echo_passwords(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL, {"CALLGATE_REDIS_URL": "http://:hunter2@host"})
    assert "hunter2" not in str(error)


# --- bad keys in the file ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", '"3000"', "1.5", "true", "10000001"])
def test_bad_plan_minutes_name_the_key(tmp_path: Path, value: str) -> None:
    error = config_error(tmp_path, MINIMAL.replace("US = 3000", f"US = {value}"))
    assert error.key == "plans.domestic.domestic_minutes.US"
    assert "'plans.domestic.domestic_minutes.US'" in str(error)


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("grant_second = 60\n" + MINIMAL, "grant_second", "grant_seconds"),
        (MINIMAL + "outbond = 'domestic'\n", "plans.domestic.outbond", "outbound"),
        (MINIMAL + "[countries.GB]\nallow_shared = true\n", "countries.GB.allow_shared", ""),
        (
            MINIMAL
            + '[[tokens]]\nid = "t"\nsha256 = "'
            + "a" * 64
            + '"\nrole = "operator"\nx = 1\n',
            "tokens[0].x",
            "",
        ),
        (
            MINIMAL + '[demo_tenant]\nid = "d"\nname = "D"\n'
            '[[demo_tenant.users]]\nid = "u"\ncountry = "US"\nplan = "domestic"\nplann = 1\n',
            "demo_tenant.users[0].plann",
            "plan",
        ),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, key: str, hint: str) -> None:
    error = config_error(tmp_path, text)
    assert error.key == key
    assert "unknown key" in str(error)
    if hint:
        assert f"did you mean {hint!r}" in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL.replace("US = 3000", "XX = 3000"), "plans.domestic.domestic_minutes.XX"),
        (MINIMAL.replace("US = 3000", "us = 3000"), "plans.domestic.domestic_minutes.us"),
        ('zones = [["US", "ZZ"]]\n' + MINIMAL, "zones[0][1]"),
        (MINIMAL + "[countries.UK]\nallow_shared_cost = true\n", "countries.UK"),
        (
            MINIMAL + '[demo_tenant]\nid = "d"\nname = "D"\n'
            '[[demo_tenant.users]]\nid = "u"\ncountry = "EU"\nplan = "domestic"\n',
            "demo_tenant.users[0].country",
        ),
    ],
)
def test_unknown_country_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    error = config_error(tmp_path, text)
    assert error.key == key
    assert "country" in str(error)


def test_overlapping_zones_are_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, 'zones = [["US", "CA"], ["MX", "CA"]]\n' + MINIMAL)
    assert error.key == "zones[1]"
    assert "CA is already in zones[0]" in str(error)


def test_zones_are_configuration(tmp_path: Path) -> None:
    settings = load(tmp_path, 'zones = [["GB", "IE"], ["US", "PR"]]\n' + MINIMAL)
    assert settings.is_domestic("GB", "IE") and settings.is_domestic("IE", "GB")
    assert not settings.is_domestic("US", "CA")
    assert load(tmp_path, "zones = []\n" + MINIMAL).zone_of("US") == frozenset({"US"})


TOKEN = '[[tokens]]\nid = "sw"\nsha256 = "{digest}"\nrole = "{role}"\n{tenants}'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[plans.Domestic]\noutbound = "domestic"\n', "plans.Domestic"),
        ('[plans.x]\noutbound = "everywhere"\n', "plans.x.outbound"),
        ("[plans.x]\n", "plans.x.outbound"),
        (
            '[plans.x]\noutbound = "domestic"\ninternational_minutes = { "*" = 600 }\n',
            "plans.x.international_minutes",
        ),
        (
            '[plans.x]\noutbound = "none"\ndomestic_minutes = { "*" = 60 }\n',
            "plans.x.domestic_minutes",
        ),
        ('default_currency = "usd"\n', "default_currency"),
        ('default_currency = "EUR"\n', "default_currency"),  # no EUR deck
        ('default_timezone = "Mars/Olympus"\n', "default_timezone"),
        ('default_timezone = "../etc/passwd"\n', "default_timezone"),
        ("grant_seconds = 0\n", "grant_seconds"),
        ("grant_seconds = 86401\n", "grant_seconds"),
        ('grant_seconds = "300"\n', "grant_seconds"),
        ("call_retention_seconds = 1\n", "call_retention_seconds"),
        ('redis_url = "http://localhost"\n', "redis_url"),
        ('database_url = "sqlite://relative.db"\n', "database_url"),
        ('database_url = ""\n', "database_url"),  # only an empty variable means unset
        ('operator_token = "in-clear"\n', "operator_token"),
        ('blocked_prefixes = ["+0881"]\n', "blocked_prefixes[0]"),
        ('blocked_prefixes = "881"\n', "blocked_prefixes"),
        ('zones = [["US"], []]\n', "zones[1]"),
        ("[countries.FR]\nallow_premium_rate = 1\n", "countries.FR.allow_premium_rate"),
        (
            TOKEN.format(digest="abc", role="switch", tenants='tenants = ["demo"]'),
            "tokens[0].sha256",
        ),
        (TOKEN.format(digest="a" * 64, role="root", tenants=""), "tokens[0].role"),
        (TOKEN.format(digest="a" * 64, role="switch", tenants=""), "tokens[0].tenants"),
        (
            TOKEN.format(digest="a" * 64, role="operator", tenants='tenants = ["x"]'),
            "tokens[0].tenants",
        ),
        (
            TOKEN.format(digest="a" * 64, role="admin", tenants='tenants = ["bad/id"]'),
            "tokens[0].tenants[0]",
        ),
        (
            TOKEN.format(digest="a" * 64, role="operator", tenants="")
            + TOKEN.format(digest="A" * 64, role="admin", tenants='tenants = ["x"]').replace(
                '"sw"', '"other"'
            ),
            "tokens[1]",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    # In TOML, top-level keys come before the first table; tables may follow.
    body = MINIMAL + text if text.startswith("[") else text + MINIMAL
    error = config_error(tmp_path, body)
    assert error.key == key, str(error)


@pytest.mark.parametrize(
    ("deck_line", "key"),
    [
        ('EUR = "rates/EUR.csv"', "rate_decks.EUR"),  # no such file
        ('eur = "rates/USD.csv"', "rate_decks.eur"),
        ("GBP = 1", "rate_decks.GBP"),
    ],
)
def test_bad_rate_decks_name_the_key(tmp_path: Path, deck_line: str, key: str) -> None:
    text = MINIMAL.replace('USD = "rates/USD.csv"', f'USD = "rates/USD.csv"\n{deck_line}')
    assert config_error(tmp_path, text).key == key


DEMO = """
[demo_tenant]
id = "demo"
name = "Demo Corp"
credits = "{credits}"
toll_free_numbers = [{toll_free}]

[[demo_tenant.users]]
id = "alice"
country = "US"
plan = "{plan}"
numbers = [{numbers}]
"""


def demo(
    credits: str = "10.00",
    toll_free: str = '"+18005550199"',
    plan: str = "domestic",
    numbers: str = '"+12125550100"',
) -> str:
    return MINIMAL + DEMO.format(credits=credits, toll_free=toll_free, plan=plan, numbers=numbers)


def test_demo_tenant_defaults_to_the_default_currency_and_timezone(tmp_path: Path) -> None:
    tenant = load(tmp_path, demo()).demo_tenant
    assert tenant is not None
    assert (tenant.currency, tenant.timezone, tenant.credits_micro) == ("USD", "UTC", 10_000_000)
    assert tenant.users[0].dial_out == "international_and_domestic"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (demo(plan="gold"), "demo_tenant.users[0].plan"),
        (demo(credits="ten"), "demo_tenant.credits"),
        (demo(credits="-1"), "demo_tenant.credits"),
        (demo(toll_free='"+12125550100"'), "demo_tenant.toll_free_numbers[0]"),  # not toll-free
        (demo(numbers='"2125550100"'), "demo_tenant.users[0].numbers[0]"),
        (demo(numbers='"+1 212 555 0100"'), "demo_tenant.users[0].numbers[0]"),
        (demo(numbers='"+11234567890"'), "demo_tenant.users[0].numbers[0]"),
        (
            demo().replace('name = "Demo Corp"', 'name = "Demo Corp"\ncurrency = "GBP"'),
            "demo_tenant.currency",
        ),
        (
            demo().replace('name = "Demo Corp"', 'name = "Demo Corp"\ntimezone = "Nowhere"'),
            "demo_tenant.timezone",
        ),
        (
            demo().replace('id = "alice"', 'id = "alice"\ndial_out = "all"'),
            "demo_tenant.users[0].dial_out",
        ),
        (
            demo() + '[[demo_tenant.users]]\nid = "alice"\ncountry = "CA"\nplan = "domestic"\n',
            "demo_tenant.users[1].id",
        ),
        (demo().replace('id = "demo"', 'id = "demo tenant"'), "demo_tenant.id"),
    ],
)
def test_bad_demo_tenant_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).key == key


def test_tokens_are_loaded_as_hashes(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"switch-secret").hexdigest()
    text = MINIMAL + TOKEN.format(
        digest=digest.upper(), role="switch", tenants='tenants = ["demo", "acme.eu"]'
    )
    (token,) = load(tmp_path, text).tokens
    assert (token.id, token.sha256, token.role) == ("sw", digest, "switch")
    assert token.tenants == ("demo", "acme.eu")


def test_broken_deck_file_names_the_deck_line_and_column(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL)
    (tmp_path / "rates" / "USD.csv").write_text(
        ",".join(HEADER) + "\n1,NANP,outbound,0.01,,,\n44,UK,outbound,cheap,,,\n", "utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({}, path)
    assert caught.value.key == "rate_decks.USD"
    assert "line 3, column rate_per_minute" in str(caught.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, "grant_seconds = = 3\n")
    assert "invalid TOML" in str(error)
