"""Where to connect: URL, namespace and schema from arguments or the environment."""

from __future__ import annotations

import os
import re
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


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


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
        raise ConfigError(f"invalid PostgreSQL URL {redact(url)!r}: {exc}") from None
