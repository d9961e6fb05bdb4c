"""identity: emails stored before NFC normalization take the form lookups now use

Revision ID: i17_nfc_emails
Revises: i16_api_keys
Create Date: 2026-12-07

Until cac8c1a an email was only lower-cased, so "José" typed with a
combining accent (e + U+0301) was stored so; now the same typing normalizes
to the composed é, which no stored row held: the person's next event made
a second profile beside the first. This rewrites, with the normalizer's
rule (NFC, then lower case):
- the identifiers table, which every lookup reads (resolve, consent by
  address, the admin lookup);
- the identifiers each touchpoint carried, which an unmerge and a forget
  compare with the identifiers table (a touchpoint carrying the old form
  stayed with the survivor of an unmerge, and a forget left it in other
  people's touchpoints);
- the identifier digests of consent changes, which an unmerge splits by.

Where the composed form is stored already, for another profile (the
person's later event made it), the two are one mailbox and most likely one
person; a migration does not merge them (merging is the pipeline's, with its
rules and audit). The composed row stays, and the decomposed duplicate is
deleted: from now on the address finds the profile that held the composed
form, and the other keeps its events and other identifiers. Its audit trail
(`profiles explain`) records the address as detached, naming the profile
that holds it; their next event carrying the address and an identifier of
the other links them as the pipeline's rules allow. Two decomposed spellings
of one address keep the one seen first.

Not rewritten: the forgotten-identifier blocklist keeps digests of the
values, not the values, so a forgotten decomposed address cannot be
recomputed and its composed form is not blocked; the audit trail (merges,
identity events) and the delivery log keep the addresses as they were.
"""

import hashlib
import unicodedata
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "i17_nfc_emails"
down_revision = "i16_api_keys"
branch_labels = None
depends_on = None

identifiers = sa.table(
    "identifiers", sa.column("type", sa.String), sa.column("value", sa.String), sa.column("profile_id", sa.String),
    sa.column("first_seen_at", sa.DateTime(timezone=True)),
)
touchpoints = sa.table("touchpoints", sa.column("touchpoint_id", sa.String), sa.column("identifiers", sa.JSON))
consent_changes = sa.table("consent_changes", sa.column("identifier_digest", sa.String))
identity_events = sa.table(
    "identity_events", sa.column("kind", sa.String), sa.column("profile_id", sa.String),
    sa.column("other_profile_id", sa.String), sa.column("touchpoint_id", sa.String), sa.column("identifiers", sa.JSON),
    sa.column("rule", sa.String), sa.column("at", sa.DateTime(timezone=True)),
)
EMAIL = "email"
DETACHED_RULE = "the same address as the other profile's once normalized (NFC; migration i17): one mailbox"


def upgrade() -> None:
    connection = op.get_bind()
    renamed = _rewrite_identifiers(connection)
    _rewrite_consent_digests(connection, renamed)
    _rewrite_touchpoints(connection)


def downgrade() -> None:
    """Nothing to put back: the decomposed spellings are the same addresses, and no code looks them up."""


def _normalized(value: str) -> str:
    """An email as `hub.identifiers.normalize_identifier` now stores it, from the stored (lower-cased) value."""
    return unicodedata.normalize("NFC", value).lower()


def _non_ascii(text: sa.ColumnElement[str], dialect: str) -> sa.ColumnElement[bool]:
    """Whether `text` holds a character beyond ASCII (more bytes than characters): only such emails change.
    SQLite before 3.43 has no octet_length."""
    octets = sa.func.octet_length(text) if dialect == "postgresql" else sa.func.length(sa.cast(text, sa.LargeBinary))
    return octets != sa.func.length(text)


def _rewrite_identifiers(connection: sa.Connection) -> dict[str, str]:
    """Each decomposed email's row normalized, or deleted where the normalized one is held; returns old -> new."""
    rows = connection.execute(
        sa.select(identifiers.c.value, identifiers.c.profile_id)
        .where(identifiers.c.type == EMAIL, _non_ascii(identifiers.c.value, connection.dialect.name))
        .order_by(identifiers.c.first_seen_at, identifiers.c.value)
    ).all()
    holder = {value: profile_id for value, profile_id in rows}  # every form a normalized one could meet
    renamed: dict[str, str] = {}
    for value, profile_id in rows:
        new = _normalized(value)
        if new == value:
            continue
        renamed[value] = new
        row = sa.and_(identifiers.c.type == EMAIL, identifiers.c.value == value)
        if new not in holder:
            connection.execute(identifiers.update().where(row).values(value=new))
            holder[new] = profile_id
            continue
        connection.execute(identifiers.delete().where(row))
        if holder[new] != profile_id:
            connection.execute(identity_events.insert().values(
                kind="detached", profile_id=profile_id, other_profile_id=holder[new], touchpoint_id=None,
                identifiers=[[EMAIL, new]], rule=DETACHED_RULE, at=datetime.now(timezone.utc),
            ))
    return renamed


def _rewrite_consent_digests(connection: sa.Connection, renamed: dict[str, str]) -> None:
    """Consent said through an address names it by digest (`hub.store.forget_digest.identifier_digest`)."""
    for old, new in renamed.items():
        connection.execute(
            consent_changes.update().where(consent_changes.c.identifier_digest == _digest(old)).values(identifier_digest=_digest(new))
        )


def _digest(value: str) -> str:
    return hashlib.sha256(f"{EMAIL}\x1f{value}".encode()).hexdigest()


def _rewrite_touchpoints(connection: sa.Connection) -> None:
    """The emails touchpoints carried, normalized: those whose identifiers hold a character beyond ASCII, written
    as itself (SQLite's JSON) or escaped (PostgreSQL's), are read."""
    text = sa.cast(touchpoints.c.identifiers, sa.Text)
    carried = connection.execute(
        sa.select(touchpoints.c.touchpoint_id, touchpoints.c.identifiers).where(
            text.contains(f'"{EMAIL}"'),
            sa.or_(_non_ascii(text, connection.dialect.name), text.contains("\\u", autoescape=True)),
        )
    ).all()
    for touchpoint_id, pairs in carried:
        normalized = [[type_, _normalized(value) if type_ == EMAIL else value] for type_, value in pairs]
        if normalized != pairs:
            connection.execute(
                touchpoints.update().where(touchpoints.c.touchpoint_id == touchpoint_id).values(identifiers=normalized)
            )
