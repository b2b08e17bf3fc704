"""Typed settings, validated once at start-up.

Sources, later wins: the defaults below, the TOML file (`CALLGATE_CONFIG`, else
`config/callgate.toml` in the current directory, else the `config/` directory next to
the package), then `CALLGATE_*` environment variables. Every problem raises
`ConfigError` naming the dotted key (`plans.domestic.domestic_minutes.US`, `tokens[0].role`)
or the environment variable; unknown keys are errors, so a typo cannot pass silently.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from gateway.errors import ConfigError, ValidationError
from gateway.rules.money import parse_money
from gateway.rules.rating import DeckError, RateDeck
from gateway.validate import ID_HINT, ID_RE
from gateway.vocab import DialOut, Role

CONFIG_FILE_NAME = "callgate.toml"
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
OUTBOUND_SCOPES = ("none", "domestic", "international")
TOKEN_ROLES = tuple(r.value for r in Role)
DIAL_OUT_POLICIES = tuple(d.value for d in DialOut)
ALL_OTHER_COUNTRIES = "*"  # minutes-table key: every country not listed
DEFAULT_ZONES: tuple[frozenset[str], ...] = (frozenset({"US", "PR", "CA"}),)  # D9
MAX_MINUTES_PER_USER = 10_000_000  # far above any real plan: catches unit mix-ups

_PLAN_ID_RE = re.compile(r"[a-z0-9_]+", re.ASCII)
_COUNTRY_RE = re.compile(r"[A-Z]{2}", re.ASCII)
_CURRENCY_RE = re.compile(r"[A-Z]{3}", re.ASCII)
_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_PREFIX_RE = re.compile(r"\+?([1-9][0-9]{0,14})", re.ASCII)
_ENV_INT_RE = re.compile(r"[0-9]{1,9}", re.ASCII)  # int() would also take " 8_080" and "+1"


@dataclass(frozen=True)
class Plan:
    """A calling plan (D2). Minutes tables: country -> minutes per user per month."""

    id: str
    outbound: str  # OUTBOUND_SCOPES: which PSTN destinations the plan may call
    domestic_minutes: dict[str, int] = field(default_factory=dict)  # empty: no domestic pool
    international_minutes: dict[str, int] = field(default_factory=dict)  # empty: none

    def domestic_minutes_for(self, country: str) -> int:
        """Minutes per user per month of the domestic pool in `country`; 0 when none."""
        return _minutes_for(self.domestic_minutes, country)

    def international_minutes_for(self, country: str) -> int:
        """Minutes per user per month of the international pool in `country`; 0 when none."""
        return _minutes_for(self.international_minutes, country)


def _minutes_for(table: Mapping[str, int], country: str) -> int:
    return table.get(country, table.get(ALL_OTHER_COUNTRIES, 0))


@dataclass(frozen=True)
class CountryRules:
    """What a destination country allows beyond ordinary numbers (D13)."""

    allow_premium_rate: bool = False
    allow_shared_cost: bool = False
    # Premium-rate or shared-cost ranges (E.164 digits, no "+") allowed from credits even
    # when their class is not: national regulators and libphonenumber do not always agree
    # on a range's class (GB 084x/087x are "shared cost" to Ofcom, premium to the library).
    allowed_prefixes: tuple[str, ...] = ()

    def allows(self, number_type: str, digits: str) -> bool:
        """Whether a premium-rate / shared-cost destination may be called (from credits)."""
        if number_type == "premium_rate" and self.allow_premium_rate:
            return True
        if number_type == "shared_cost" and self.allow_shared_cost:
            return True
        return any(digits.startswith(p) for p in self.allowed_prefixes)


@dataclass(frozen=True)
class TokenEntry:
    """An API token, stored as the SHA-256 (hex) of the bearer token, never in clear."""

    id: str
    sha256: str  # 64 lower-case hex digits
    role: str  # TOKEN_ROLES
    tenants: tuple[str, ...] = ()  # switch/admin: the tenants it acts for; operator: all


@dataclass(frozen=True)
class DemoUser:
    id: str
    country: str  # usage location (D3)
    plan: str
    numbers: tuple[str, ...] = ()  # E.164
    dial_out: str = "international_and_domestic"  # DIAL_OUT_POLICIES (D23)


@dataclass(frozen=True)
class DemoTenant:
    """A tenant that `make run` creates so the system can be tried at once."""

    id: str
    name: str
    currency: str
    timezone: str
    credits: str  # initial balance, a decimal string ("10.00")
    users: tuple[DemoUser, ...] = ()
    toll_free_numbers: tuple[str, ...] = ()  # E.164

    @property
    def credits_micro(self) -> int:
        return parse_money(self.credits, "demo_tenant.credits", allow_zero=True)


def _cpu_count() -> int:
    # CPUs this process may run on (respects taskset/cpusets), not all CPUs of the host.
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Secrets may sit in these URLs and the token: kept out of repr() and so out of logs.
    redis_url: str | None = field(default=None, repr=False)  # None: supervise a local redis
    database_url: str | None = field(default=None, repr=False)  # None: SQLite in data_dir
    data_dir: Path = Path("var")  # relative to the current directory
    operator_token: str | None = field(default=None, repr=False)  # env only, never the file
    grant_seconds: int = 300  # largest grant per authorize/extend
    clock_skew_seconds: int = 300  # how far started_at may be from our clock
    workers: int = field(default_factory=_cpu_count)
    partitions: int = 64  # P of the {pNNN} hash tag; fixed for the life of a deployment
    redis_timeout_ms: int = 100  # bound on one call-control Redis round trip
    # Call-control requests one worker keeps in flight; more are shed (service_unavailable)
    # at once. Size: requests/s a worker serves x the latency you accept (docs/overload.md).
    max_inflight_calls: int = 256
    # Authorizations per second of a tenant that has no rate of its own (token bucket of
    # twice as many; 0: no limit). Generous: a limit on abuse, not on business.
    tenant_authorizations_per_second: int = 1000
    reaper_grace_seconds: int = 60
    # The replay window: a closed call stays in Redis this long for idempotent retries
    # (D31, D32) and GET; later, GET reads it from the ledger.
    call_retention_seconds: int = 86_400
    default_currency: str = "USD"
    default_timezone: str = "UTC"
    plans: dict[str, Plan] = field(default_factory=dict)
    zones: tuple[frozenset[str], ...] = DEFAULT_ZONES  # unlisted country: a zone of its own
    countries: dict[str, CountryRules] = field(default_factory=dict)
    blocked_prefixes: tuple[str, ...] = ()  # digits, no "+"
    rate_decks: dict[str, RateDeck] = field(default_factory=dict)  # currency -> deck
    tokens: tuple[TokenEntry, ...] = ()
    demo_tenant: DemoTenant | None = None
    # HTTP connection limits (docs/http-limits.md): a request head (a new connection's
    # first request, whole) must arrive within this; open connections per worker.
    http_head_timeout_seconds: int = 10
    http_max_connections: int = 10_000
    # Webhooks may target loopback and private addresses (tests, private deployments).
    webhook_allow_private: bool = False

    @property
    def database_url_effective(self) -> str:
        """The ledger URL; SQLite default: "sqlite:///" + path (4 slashes if absolute)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'ledger.db'}"

    @cached_property
    def _zone_by_country(self) -> dict[str, frozenset[str]]:
        return {country: zone for zone in self.zones for country in zone}

    def zone_of(self, country: str) -> frozenset[str]:
        """The domestic zone containing `country` (D9), or {country} alone."""
        return self._zone_by_country.get(country) or frozenset({country})

    def is_domestic(self, user_country: str, dest_country: str) -> bool:
        return dest_country in self.zone_of(user_country)

    def rules_for(self, country: str) -> CountryRules:
        return self.countries.get(country) or CountryRules()


_DEFAULTS = Settings()  # the one place defaults live; the loader reads them from here


def load_settings(env: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    """Read, validate and return the settings; raise ConfigError naming the first bad key."""
    env = os.environ if env is None else env
    config_path = _config_path(env, path)
    root = _Table(_read_toml(config_path), "")
    settings = _build(root, env, config_path.parent)
    root.done()
    _check_references(settings)
    return settings


def _config_path(env: Mapping[str, str], path: Path | None) -> Path:
    if path is None and "CALLGATE_CONFIG" in env:
        path = Path(env["CALLGATE_CONFIG"])
        if path.suffix.lower() in (".yaml", ".yml"):
            raise ConfigError("CALLGATE_CONFIG", "callgate reads TOML configuration only")
        if not path.is_file():
            raise ConfigError("CALLGATE_CONFIG", f"no such file: {path}")
    if path is None:
        local = Path("config") / CONFIG_FILE_NAME
        path = local if local.is_file() else PACKAGE_CONFIG_DIR / CONFIG_FILE_NAME
    if not path.is_file():
        raise ConfigError("CALLGATE_CONFIG", f"no configuration file at {path}")
    return path


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"invalid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror}") from None


class _Table:
    """One TOML table being read: keys taken are recorded, `done()` rejects the rest."""

    def __init__(self, data: object, key: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(key, "must be a table")
        self.key = key
        self._data: dict[str, object] = data
        self._taken: set[str] = set()

    def key_of(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def take(self, name: str, default: object = None) -> object:
        """The value of `name`, or `default` when absent (never for a falsy value)."""
        self._taken.add(name)
        return self._data.get(name, default)

    def items(self) -> list[tuple[str, object]]:
        """All entries, for tables whose keys are data (plan ids, countries)."""
        self._taken.update(self._data)
        return list(self._data.items())

    def table(self, name: str) -> _Table:
        value = self.take(name)
        return _Table({} if value is None else value, self.key_of(name))

    def done(self) -> None:
        for name in self._data:
            if name not in self._taken:
                hint = difflib.get_close_matches(name, sorted(self._taken), n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(self.key_of(name), f"unknown key{suffix}")


def _build(root: _Table, env: Mapping[str, str], config_dir: Path) -> Settings:
    if root.take("operator_token") is not None:
        raise ConfigError(
            "operator_token",
            "tokens are never stored in clear: set CALLGATE_OPERATOR_TOKEN, "
            "or add a [[tokens]] entry with the token's sha256",
        )
    default_currency = _currency(root.take("default_currency", "USD"), "default_currency")
    default_timezone = _timezone(root.take("default_timezone", "UTC"), "default_timezone")
    return Settings(
        http_host=_text_setting(root, env, "http_host", "CALLGATE_HTTP_HOST"),
        http_port=_int_setting(root, env, "http_port", "CALLGATE_HTTP_PORT", (0, 65_535)),
        redis_url=_url_setting(root, env, "redis_url", "CALLGATE_REDIS_URL", _redis_url),
        database_url=_url_setting(
            root, env, "database_url", "CALLGATE_DATABASE_URL", _database_url
        ),
        data_dir=Path(_text_setting(root, env, "data_dir", "CALLGATE_DATA_DIR")),
        operator_token=_operator_token(env, "CALLGATE_OPERATOR_TOKEN"),
        grant_seconds=_int_setting(
            root, env, "grant_seconds", "CALLGATE_GRANT_SECONDS", (1, 86_400)
        ),
        clock_skew_seconds=_int_setting(
            root, env, "clock_skew_seconds", "CALLGATE_CLOCK_SKEW_SECONDS", (0, 86_400)
        ),
        workers=_int_setting(root, env, "workers", "CALLGATE_WORKERS", (1, 1024)),
        # More partitions than Redis Cluster's 16,384 slots would buy nothing.
        partitions=_int_setting(root, env, "partitions", "CALLGATE_PARTITIONS", (1, 16_384)),
        redis_timeout_ms=_int_setting(
            root, env, "redis_timeout_ms", "CALLGATE_REDIS_TIMEOUT_MS", (1, 60_000)
        ),
        max_inflight_calls=_int_setting(
            root, env, "max_inflight_calls", "CALLGATE_MAX_INFLIGHT_CALLS", (1, 1_000_000)
        ),
        tenant_authorizations_per_second=_int_setting(
            root, env, "tenant_authorizations_per_second",
            "CALLGATE_TENANT_AUTHORIZATIONS_PER_SECOND", (0, 1_000_000)
        ),
        reaper_grace_seconds=_int_setting(
            root, env, "reaper_grace_seconds", "CALLGATE_REAPER_GRACE_SECONDS", (0, 86_400)
        ),
        call_retention_seconds=_int_setting(
            root, env, "call_retention_seconds", None, (60, 366 * 86_400)
        ),
        default_currency=default_currency,
        default_timezone=default_timezone,
        plans=_plans(root.table("plans")),
        zones=_zones(root.take("zones")),
        countries=_countries(root.table("countries")),
        blocked_prefixes=_blocked_prefixes(root.take("blocked_prefixes", [])),
        rate_decks=_rate_decks(root.table("rate_decks"), config_dir),
        tokens=_tokens(root.take("tokens", [])),
        demo_tenant=_demo_tenant(root.take("demo_tenant"), default_currency, default_timezone),
        http_head_timeout_seconds=_int_setting(
            root, env, "http_head_timeout_seconds", "CALLGATE_HTTP_HEAD_TIMEOUT_SECONDS", (1, 300)
        ),
        http_max_connections=_int_setting(
            root, env, "http_max_connections", "CALLGATE_HTTP_MAX_CONNECTIONS", (1, 1_000_000)
        ),
        webhook_allow_private=bool(_int_setting(
            root, env, "webhook_allow_private", "CALLGATE_WEBHOOK_ALLOW_PRIVATE", (0, 1))),
    )


# --- scalar settings: the file key, then the environment variable that overrides it -------


def _int_setting(
    root: _Table, env: Mapping[str, str], name: str, var: str | None, bounds: tuple[int, int]
) -> int:
    low, high = bounds
    file_value = root.take(name)
    if var is not None and var in env:
        return _in_range(_env_int(env[var], var), var, low, high)
    if file_value is None:
        default: int = getattr(_DEFAULTS, name)
        return default
    return _in_range(_int(file_value, root.key_of(name)), root.key_of(name), low, high)


def _text_setting(root: _Table, env: Mapping[str, str], name: str, var: str) -> str:
    raw, key = _env_or_file(root, env, name, var)
    if raw is None:
        return str(getattr(_DEFAULTS, name))
    return _non_blank(_str(raw, key), key)


def _url_setting(
    root: _Table, env: Mapping[str, str], name: str, var: str, check: Callable[[str, str], str]
) -> str | None:
    raw, key = _env_or_file(root, env, name, var)
    if raw is None or (raw == "" and key == var):  # an empty variable unsets the file's URL
        return None
    return check(_str(raw, key), key)


def _env_or_file(root: _Table, env: Mapping[str, str], name: str, var: str) -> tuple[object, str]:
    file_value = root.take(name)  # taken even when overridden, so it is not "unknown"
    if var in env:
        return env[var], var
    return file_value, root.key_of(name)


def _optional_env(env: Mapping[str, str], var: str) -> str | None:
    return env.get(var) or None  # an empty variable means unset, never an empty token


# The bootstrap operator token acts for every tenant: it must carry at least 128 bits.
# Counted from its length and alphabet, simply: 4 bits a character for a token made only of
# hex digits, 6 bits a character otherwise (the base64url alphabet; other visible ASCII
# characters are credited no more). So at least 32 hex digits, or at least 22 characters of
# anything else: `secrets.token_urlsafe(16)` or `secrets.token_hex(16)` pass, a word does not.
OPERATOR_TOKEN_BITS_MIN = 128
_HEX_RE = re.compile(r"[0-9A-Fa-f]+", re.ASCII)
_VISIBLE_ASCII_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)


def token_bits(token: str) -> int:
    """The bits a token is credited with (see OPERATOR_TOKEN_BITS_MIN)."""
    return len(token) * (4 if _HEX_RE.fullmatch(token) else 6)


def _operator_token(env: Mapping[str, str], var: str) -> str | None:
    token = _optional_env(env, var)
    if token is None:
        return None
    # Messages describe the token, never echo it.
    if _VISIBLE_ASCII_RE.fullmatch(token) is None:
        raise ConfigError(var, "must be visible ASCII characters only (no spaces or control "
                               "characters)")
    if token_bits(token) < OPERATOR_TOKEN_BITS_MIN:
        raise ConfigError(
            var, f"must carry at least {OPERATOR_TOKEN_BITS_MIN} bits: at least 32 hex digits "
                 f"or 22 base64url characters (this one is {len(token)} characters); generate "
                 "one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def _env_int(raw: str, var: str) -> int:
    if _ENV_INT_RE.fullmatch(raw) is None:
        raise ConfigError(var, f"must be a whole number, got {raw!r}")
    return int(raw)


# --- sections ------------------------------------------------------------------------------


def _plans(table: _Table) -> dict[str, Plan]:
    plans: dict[str, Plan] = {}
    for plan_id, value in table.items():
        key = table.key_of(plan_id)
        if _PLAN_ID_RE.fullmatch(plan_id) is None:
            raise ConfigError(key, "plan ids are lower-case letters, digits and '_'")
        plans[plan_id] = _plan(plan_id, _Table(value, key))
    return plans


def _plan(plan_id: str, table: _Table) -> Plan:
    outbound = _one_of(table.take("outbound"), table.key_of("outbound"), OUTBOUND_SCOPES)
    domestic = _minutes(table.table("domestic_minutes"))
    international = _minutes(table.table("international_minutes"))
    table.done()
    # A pool the plan cannot dial into would be sold and never usable.
    if domestic and outbound == "none":
        raise ConfigError(table.key_of("domestic_minutes"), 'needs outbound "domestic" or wider')
    if international and outbound != "international":
        raise ConfigError(table.key_of("international_minutes"), 'needs outbound "international"')
    return Plan(plan_id, outbound, domestic, international)


def _minutes(table: _Table) -> dict[str, int]:
    minutes: dict[str, int] = {}
    for country, value in table.items():
        key = table.key_of(country)
        if country != ALL_OTHER_COUNTRIES:
            _country(country, key)
        minutes[country] = _in_range(_int(value, key), key, 0, MAX_MINUTES_PER_USER)
    return minutes


def _zones(value: object) -> tuple[frozenset[str], ...]:
    if value is None:
        return DEFAULT_ZONES
    zones: list[frozenset[str]] = []
    zone_index: dict[str, int] = {}  # country -> the zone that already holds it
    for i, countries in enumerate(_list(value, "zones")):
        key = f"zones[{i}]"
        members = [_country(c, f"{key}[{j}]") for j, c in enumerate(_list(countries, key))]
        if not members:
            raise ConfigError(key, "a zone lists at least one country")
        for country in members:
            if country in zone_index:
                raise ConfigError(key, f"{country} is already in zones[{zone_index[country]}]")
            zone_index[country] = i
        zones.append(frozenset(members))
    return tuple(zones)


def _countries(table: _Table) -> dict[str, CountryRules]:
    countries: dict[str, CountryRules] = {}
    for country, value in table.items():
        rules = _Table(value, table.key_of(_country(country, table.key_of(country))))
        countries[country] = CountryRules(
            allow_premium_rate=_bool(rules.take("allow_premium_rate"), rules, "allow_premium_rate"),
            allow_shared_cost=_bool(rules.take("allow_shared_cost"), rules, "allow_shared_cost"),
            allowed_prefixes=_prefix_list(rules.take("allowed_prefixes", []),
                                          rules.key_of("allowed_prefixes")),
        )
        rules.done()
    return countries


def _blocked_prefixes(value: object) -> tuple[str, ...]:
    return _prefix_list(value, "blocked_prefixes")


def _prefix_list(value: object, name: str) -> tuple[str, ...]:
    prefixes: dict[str, None] = {}  # ordered set: duplicates are harmless, kept once
    for i, item in enumerate(_list(value, name)):
        key = f"{name}[{i}]"
        match = _PREFIX_RE.fullmatch(_str(item, key))
        if match is None:
            raise ConfigError(key, "must be 1-15 digits (optional '+'), not starting with 0")
        prefixes[match.group(1)] = None
    return tuple(prefixes)


def _rate_decks(table: _Table, config_dir: Path) -> dict[str, RateDeck]:
    decks: dict[str, RateDeck] = {}
    for currency, value in table.items():
        key = table.key_of(currency)
        _currency(currency, key)
        path = config_dir / _str(value, key)  # relative paths: next to the config file
        try:
            decks[currency] = RateDeck.from_csv(path.read_text(encoding="utf-8"), currency)
        except OSError as error:
            raise ConfigError(key, f"cannot read {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(key, f"{path} is not UTF-8 text") from None
        except DeckError as error:
            raise ConfigError(key, f"{path}: {error}") from None
    return decks


def _tokens(value: object) -> tuple[TokenEntry, ...]:
    tokens: list[TokenEntry] = []
    for i, item in enumerate(_list(value, "tokens")):
        token = _token(_Table(item, f"tokens[{i}]"))
        for other in tokens:
            if token.id == other.id or token.sha256 == other.sha256:
                raise ConfigError(f"tokens[{i}]", f"same id or sha256 as token {other.id!r}")
        tokens.append(token)
    return tuple(tokens)


def _token(table: _Table) -> TokenEntry:
    token_id = _identifier(table.take("id"), table.key_of("id"))
    digest = _str(table.take("sha256"), table.key_of("sha256")).lower()
    if _SHA256_RE.fullmatch(digest) is None:
        raise ConfigError(table.key_of("sha256"), "must be 64 hex digits (sha256 of the token)")
    role = _one_of(table.take("role"), table.key_of("role"), TOKEN_ROLES)
    tenants_key = table.key_of("tenants")
    tenants = tuple(
        _identifier(t, f"{tenants_key}[{j}]")
        for j, t in enumerate(_list(table.take("tenants", []), tenants_key))
    )
    table.done()
    if role == Role.OPERATOR and tenants:
        raise ConfigError(tenants_key, "operator tokens act for every tenant; list none")
    if role != Role.OPERATOR and not tenants:
        raise ConfigError(tenants_key, f"a {role} token must list the tenants it acts for")
    return TokenEntry(token_id, digest, role, tenants)


def _demo_tenant(value: object, currency: str, timezone: str) -> DemoTenant | None:
    if value is None:
        return None
    table = _Table(value, "demo_tenant")
    credits = _str(table.take("credits", "0"), table.key_of("credits"))
    try:
        parse_money(credits, table.key_of("credits"), allow_zero=True)
    except ValidationError as error:
        raise ConfigError(table.key_of("credits"), error.errors[0].message) from None
    users_key = table.key_of("users")
    numbers_key = table.key_of("toll_free_numbers")
    tenant = DemoTenant(
        id=_identifier(table.take("id"), table.key_of("id")),
        name=_non_blank(_str(table.take("name"), table.key_of("name")), table.key_of("name")),
        currency=_currency(table.take("currency", currency), table.key_of("currency")),
        timezone=_timezone(table.take("timezone", timezone), table.key_of("timezone")),
        credits=credits,
        users=tuple(
            _demo_user(_Table(u, f"{users_key}[{i}]"))
            for i, u in enumerate(_list(table.take("users", []), users_key))
        ),
        toll_free_numbers=tuple(
            _e164(n, f"{numbers_key}[{i}]", toll_free=True)
            for i, n in enumerate(_list(table.take("toll_free_numbers", []), numbers_key))
        ),
    )
    table.done()
    return tenant


def _demo_user(table: _Table) -> DemoUser:
    numbers_key = table.key_of("numbers")
    user = DemoUser(
        id=_identifier(table.take("id"), table.key_of("id")),
        country=_country(table.take("country"), table.key_of("country")),
        plan=_str(table.take("plan"), table.key_of("plan")),
        numbers=tuple(
            _e164(n, f"{numbers_key}[{i}]")
            for i, n in enumerate(_list(table.take("numbers", []), numbers_key))
        ),
        dial_out=_one_of(
            table.take("dial_out", DIAL_OUT_POLICIES[0]),
            table.key_of("dial_out"),
            DIAL_OUT_POLICIES,
        ),
    )
    table.done()
    return user


def _check_references(settings: Settings) -> None:
    """Cross-section rules: every name used somewhere is defined somewhere."""
    if settings.default_currency not in settings.rate_decks:
        raise ConfigError("default_currency", f"no rate deck for {settings.default_currency}")
    demo = settings.demo_tenant
    if demo is None:
        return
    if demo.currency not in settings.rate_decks:
        raise ConfigError("demo_tenant.currency", f"no rate deck for {demo.currency}")
    seen: set[str] = set()
    for i, user in enumerate(demo.users):
        if user.plan not in settings.plans:
            raise ConfigError(f"demo_tenant.users[{i}].plan", f"no plan {user.plan!r} in [plans]")
        if user.id in seen:
            raise ConfigError(f"demo_tenant.users[{i}].id", f"duplicate user {user.id!r}")
        seen.add(user.id)


# --- value checks: each takes the raw value and the key to blame ---------------------------


def _str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, "required, a string" if value is None else "must be a string")
    return value


def _non_blank(value: str, key: str) -> str:
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


def _int(value: object, key: str) -> int:
    # bool is an int subclass in Python; `true` for a number is a typo, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, "must be a whole number")
    return value


def _in_range(value: int, key: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got {value}")
    return value


def _bool(value: object, table: _Table, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(table.key_of(name), "must be true or false")
    return value


def _list(value: object, key: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return value


def _one_of(value: object, key: str, choices: tuple[str, ...]) -> str:
    text = _str(value, key)
    if text not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}; got {text!r}")
    return text


def _identifier(value: object, key: str) -> str:
    text = _str(value, key)
    if ID_RE.fullmatch(text) is None:  # api.md path identifiers
        raise ConfigError(key, ID_HINT)
    return text


def _country(value: object, key: str) -> str:
    text = _str(value, key)
    if _COUNTRY_RE.fullmatch(text) is None or text not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(key, f"{text!r} is not an ISO 3166 alpha-2 country phonenumbers knows")
    return text


def _currency(value: object, key: str) -> str:
    text = _str(value, key)
    if _CURRENCY_RE.fullmatch(text) is None:
        raise ConfigError(key, f"a currency is 3 upper-case letters (ISO 4217), got {text!r}")
    return text


def _timezone(value: object, key: str) -> str:
    text = _str(value, key)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            key, f"unknown time zone {text!r} (IANA name, e.g. Europe/Paris)"
        ) from None
    return text


def _e164(value: object, key: str, *, toll_free: bool = False) -> str:
    text = _str(value, key)
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise ConfigError(key, f"must be an E.164 number like +14165550100, got {text!r}") from None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(number) or e164 != text:
        raise ConfigError(key, f"must be a valid E.164 number like +14165550100, got {text!r}")
    if toll_free and phonenumbers.number_type(number) != phonenumbers.PhoneNumberType.TOLL_FREE:
        raise ConfigError(key, f"{text} is not a toll-free number")
    return text


def _redis_url(value: str, key: str) -> str:
    # The URL may carry a password: messages describe it, never echo it.
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError(key, "is not a valid URL") from None
    if parts.scheme not in ("redis", "rediss", "unix", "redis+cluster"):
        raise ConfigError(key, "must start with redis://, rediss://, unix:// or redis+cluster://")
    if not (parts.path if parts.scheme == "unix" else parts.netloc):
        raise ConfigError(key, "names no server (a host, or a socket path for unix://)")
    return value


def _database_url(value: str, key: str) -> str:
    for scheme in ("sqlite:///", "postgresql://"):
        if value.startswith(scheme) and len(value) > len(scheme):
            return value
    raise ConfigError(key, "must be sqlite:///<path> or postgresql://…")
