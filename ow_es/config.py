"""Where to connect: URL, namespace and schema from arguments or the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ow_es.errors import ConfigError

DEFAULT_NAMESPACE = "default"
DEFAULT_SCHEMA = "openworkflow"
DEFAULT_SQLITE_PATH = "openworkflow.db"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

_SCHEMA_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NAMESPACE_RULE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True)
class Settings:
    """Resolved connection settings; ``url`` is a libpq URL or a SQLite file path."""

    backend: Literal["postgres", "sqlite"]
    url: str
    namespace: str
    schema: str
    sqlite_path: str | None = None

    def describe(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:{self.sqlite_path} namespace={self.namespace}"
        return f"postgres:{redact(self.url)} schema={self.schema} namespace={self.namespace}"


def validate_schema(schema: str) -> str:
    if not isinstance(schema, str) or not _SCHEMA_RULE.fullmatch(schema):
        raise ConfigError(
            f"invalid schema name {schema!r}: it must match [A-Za-z_][A-Za-z0-9_]{{0,62}}"
        )
    return schema


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE_RULE.fullmatch(namespace):
        raise ConfigError(
            f"invalid namespace {namespace!r}: it must be 1-128 characters of [A-Za-z0-9_.:-]"
        )
    return namespace


_SECRET_KEYS = frozenset({"password", "sslpassword"})
HIDDEN = "***"


def _parameters(url: str) -> dict[str, str] | None:
    """libpq's reading of a URL or keyword DSN; None when libpq cannot read it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except psycopg.Error:
        return None


def _host_without_userinfo(host: str) -> str:
    """An unencoded ``@`` in a URL's password makes libpq read the password's tail as part of
    the host (``u:p@ss@h`` -> password ``p``, host ``ss@h``): hide that tail as well."""
    return ",".join(
        f"{HIDDEN}@{part.rpartition('@')[2]}" if "@" in part else part for part in host.split(",")
    )


def redact(url: str) -> str:
    """The connection string without its secrets, for messages.

    libpq parses it (``psycopg.conninfo``), so a password in the URL's user part, in its query
    (``?password=``) or in a keyword DSN (``password=``) is found wherever it is; the result is
    the keyword form with each secret as ``***``. A string without secrets comes back as it is;
    one libpq cannot parse is masked by pattern.
    """
    from psycopg.conninfo import make_conninfo

    params = _parameters(url)
    if params is None:
        return _mask_unparsed(url)
    hidden = {key: _hidden(key, value) for key, value in params.items()}
    return url if hidden == params else make_conninfo("", **hidden)


def _hidden(key: str, value: str) -> str:
    if key in _SECRET_KEYS:
        return HIDDEN
    return _host_without_userinfo(value) if key == "host" else value


def _mask_unparsed(text: str) -> str:
    text = re.sub(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", rf"\1{HIDDEN}", text)
    return re.sub(r"^(\w[\w+.-]*://[^:/@]*):[^/]*@", rf"\1:{HIDDEN}@", text)


def secrets(url: str) -> list[str]:
    """The parts of ``url`` no message may show: its passwords and, for a password with an
    unencoded ``@``, the host libpq made of its tail (longest first, for replacing)."""
    params = _parameters(url) or {}
    found = {value for key, value in params.items() if key in _SECRET_KEYS and value}
    found.update(part for part in params.get("host", "").split(",") if "@" in part)
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, urls: Iterable[str]) -> str:
    """``text`` with every secret of ``urls`` replaced by ``***`` (a host that hid a password's
    tail keeps its real part: ``***@h``)."""
    for url in urls:
        for secret in secrets(url):
            if "@" in secret:
                text = text.replace(secret, _host_without_userinfo(secret))
            else:
                text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", HIDDEN, text)
    return text


def sqlite_path_from_url(url: str) -> str:
    """SQLAlchemy convention: ``sqlite:///rel.db`` relative, ``sqlite:////abs.db`` absolute."""
    if url in ("sqlite://", "sqlite:///:memory:", "sqlite://:memory:"):
        return ":memory:"
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path:
        raise ConfigError(f"invalid SQLite URL {url!r}: no file path")
    return path


def resolve(
    url: str | None = None,
    namespace: str | None = None,
    schema: str | None = None,
) -> Settings:
    """Apply the precedence: argument, OW_ES_DATABASE_URL, OPENWORKFLOW_POSTGRES_URL, default."""
    env = os.environ
    chosen = url or env.get("OW_ES_DATABASE_URL") or env.get("OPENWORKFLOW_POSTGRES_URL")
    ns = validate_namespace(
        namespace
        if namespace is not None
        else env.get("OPENWORKFLOW_NAMESPACE_ID", "") or DEFAULT_NAMESPACE
    )
    sch = validate_schema(
        schema if schema is not None else env.get("OPENWORKFLOW_SCHEMA", "") or DEFAULT_SCHEMA
    )
    if not chosen:
        path = str(Path(DEFAULT_SQLITE_PATH))
        return Settings("sqlite", f"sqlite:///{path}", ns, sch, sqlite_path=path)
    if not isinstance(chosen, str):
        raise ConfigError(f"invalid database URL {chosen!r}: expected a string")
    if chosen.startswith("sqlite:"):
        return Settings("sqlite", chosen, ns, sch, sqlite_path=sqlite_path_from_url(chosen))
    if chosen.startswith(("postgresql://", "postgres://")):
        _check_postgres_url(chosen)
        return Settings("postgres", chosen, ns, sch)
    raise ConfigError(
        f"invalid database URL {redact(chosen)!r}: it must start with postgresql:// or sqlite:///"
    )


def _check_postgres_url(url: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        detail = redact_text(str(exc), [url]).replace(url, redact(url))
        raise ConfigError(f"invalid PostgreSQL URL {redact(url)!r}: {detail}") from None
