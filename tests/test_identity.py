"""Identity resolution against a real SQLite store: create, attach, merge (oldest survives), traits, rules."""

from __future__ import annotations

import functools
import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.clock import utcnow
from hub.errors import ConfigError
from hub.identifiers import normalize_identifier
from hub.identity import resolve
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig, load_identity_config
from hub.model import Identifier, Touchpoint, derived_id
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store
from hub.store.identity_explain import explain
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import counts, live_profile_id, profile_view
from hub.store.schema import identity_events, profiles
from hub.store.traits import newest_traits, part_time_key, stamped_traits

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path}/identity.db")
    store.migrate()
    return store


def touchpoint(
    n: int, *idents: tuple[str, str], traits: dict | None = None, minutes: int = 0, kind: str = "track"
) -> Touchpoint:
    return Touchpoint(
        touchpoint_id=derived_id("test", str(n)), source_id="test", message_id=str(n), kind=kind, event="x",
        stage="awareness", moment="other", occurred_at=T0 + timedelta(minutes=minutes), received_at=T0,
        identifiers=tuple(Identifier(t, v) for t, v in idents), traits=traits or {},
    )


def resolve_in(store: Store, tp: Touchpoint, config: IdentityConfig = DEFAULT_IDENTITY):
    with store.write() as connection:
        graph = SqlIdentityGraph(connection)
        resolution = resolve(tp, graph, T0, config)
        graph.update_traits(resolution.profile_id, tp.traits, tp.occurred_at)
        return resolution


@pytest.mark.parametrize(
    ("type_", "raw", "expected"),
    [
        ("email", "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("phone", "(415) 555-0123", "+14155550123"),
        ("phone", "+44 20 7946 0958", "+442079460958"),
        ("user_id", 42, "42"),
        ("anonymous_id", " abc ", "abc"),
    ],
)
def test_values_are_normalized(type_: str, raw: object, expected: str) -> None:
    assert normalize_identifier(type_, raw, "US") == Identifier(type_, expected)


@pytest.mark.parametrize(
    ("type_", "raw"),
    [("user_id", "null"), ("anonymous_id", "undefined"), ("user_id", "0"), ("email", ""), ("email", "test@test.com"),
     ("email", "not-an-email"), ("phone", "12"), ("user_id", None), ("user_id", True), ("user_id", {"a": 1})],
)
def test_junk_values_are_refused(type_: str, raw: object) -> None:
    assert normalize_identifier(type_, raw, "US") is None


@pytest.mark.parametrize("raw", [
    "ana@example.com, eve@evil.example", "ana@example.com;eve@evil.example", "ana@example.com eve@evil.example",
    "Ana <ana@example.com>", "<ana@example.com>", "ana@example.com\nBcc: eve@evil.example", "ana@exam\u2028ple.com",
    '"ana eve"@example.com', "ana@@example.com", "ana@example.com.", "a" * 65 + "@example.com",
])
def test_an_email_value_that_is_not_exactly_one_bare_address_is_refused(raw: str) -> None:
    """Checking for an "@" alone let one person's email go to several mailboxes: smtplib and every header parser
    read each address in a comma list, and a display name or line break smuggles in more."""
    assert normalize_identifier("email", raw, "US") is None


@pytest.mark.parametrize("raw", [
    "o'brien+news@example.com", "jane@bücher.example", "jäne@example.com", "a@localhost",
    "taro..yamada@docomo.ne.jp", "taro.@docomo.ne.jp",  # issued by Japanese carriers, delivered by mail servers
])
def test_unusual_but_valid_email_addresses_are_kept(raw: str) -> None:
    assert normalize_identifier("email", raw, "US") == Identifier("email", raw)


def test_unknown_identifiers_create_a_profile_and_known_ones_reuse_it(store: Store) -> None:
    first = resolve_in(store, touchpoint(1, ("anonymous_id", "a1")))
    second = resolve_in(store, touchpoint(2, ("anonymous_id", "a1"), ("email", "x@example.com")))
    assert first.created and not second.created
    assert second.profile_id == first.profile_id
    with store.read() as connection:
        view = profile_view(connection, first.profile_id)
    assert view is not None
    assert view["identifiers"] == {"anonymous_id": ["a1"], "email": ["x@example.com"]}


def test_linking_two_profiles_merges_them_and_the_oldest_survives(store: Store) -> None:
    older = resolve_in(store, touchpoint(1, ("anonymous_id", "mobile"), traits={"plan": "free"}, minutes=1))
    newer = resolve_in(store, touchpoint(2, ("email", "sam@example.com"), traits={"plan": "pro", "city": "Oslo"}, minutes=2))
    assert older.profile_id < newer.profile_id
    link = resolve_in(store, touchpoint(3, ("anonymous_id", "mobile"), ("email", "sam@example.com"), minutes=3))
    assert link.profile_id == older.profile_id
    assert link.merged_profile_ids == (newer.profile_id,)
    with store.read() as connection:
        assert live_profile_id(connection, newer.profile_id) == older.profile_id  # the old id still resolves
        view = profile_view(connection, newer.profile_id)
        assert counts(connection) == {"profiles": 1, "merges": 1}
    assert view is not None
    assert view["profile_id"] == older.profile_id
    assert view["merged_profile_ids"] == [newer.profile_id]
    assert view["traits"] == {"plan": "pro", "city": "Oslo"}  # newest event wins per trait


def test_traits_are_last_write_wins_by_event_time_not_arrival(store: Store) -> None:
    resolve_in(store, touchpoint(1, ("user_id", "u"), traits={"plan": "pro"}, minutes=10))
    late_arrival = resolve_in(store, touchpoint(2, ("user_id", "u"), traits={"plan": "free", "age": 30}, minutes=5))
    with store.read() as connection:
        view = profile_view(connection, late_arrival.profile_id)
    assert view is not None and view["traits"] == {"plan": "pro", "age": 30}


def test_each_part_of_consent_keeps_its_own_time_whatever_the_arrival_order() -> None:
    """`consent: {sms: false}`, then START for SMS, then `consent: {email: true}`: SMS is granted, in any order,
    though the object was last touched after the START."""
    said = [
        stamped_traits({"consent": {"sms": False}}, T0),
        stamped_traits({"consent": {"sms": True}}, T0 + timedelta(minutes=10)),
        stamped_traits({"consent": {"email": True}}, T0 + timedelta(minutes=30)),
    ]
    for order in itertools.permutations(said):
        traits = functools.reduce(newest_traits, order, ({}, {}))
        assert traits[0] == {"consent": {"sms": True, "email": True}}, order
        assert traits[1][part_time_key("consent", "sms")] == (T0 + timedelta(minutes=10)).isoformat()
    replaced = newest_traits(traits, stamped_traits({"consent": "none"}, T0 + timedelta(hours=1)))
    assert replaced == ({"consent": "none"}, {"consent": (T0 + timedelta(hours=1)).isoformat()})  # no stale part times


def test_chain_of_merges_leaves_every_old_id_one_hop_from_the_survivor(store: Store) -> None:
    a = resolve_in(store, touchpoint(1, ("anonymous_id", "a"))).profile_id
    b = resolve_in(store, touchpoint(2, ("anonymous_id", "b"))).profile_id
    c = resolve_in(store, touchpoint(3, ("anonymous_id", "c"))).profile_id
    resolve_in(store, touchpoint(4, ("anonymous_id", "b"), ("anonymous_id", "c")))
    resolve_in(store, touchpoint(5, ("anonymous_id", "a"), ("anonymous_id", "c")))
    with store.read() as connection:
        assert {live_profile_id(connection, p) for p in (a, b, c)} == {a}
        assert counts(connection) == {"profiles": 1, "merges": 2}


def test_shipped_identity_file_declares_unify_like_limits_and_a_custom_type() -> None:
    config = load_identity_config(PROJECT_MAPPINGS / "identity.yaml")
    assert (config.limit("user_id"), config.limit("email"), config.limit("anonymous_id")) == (1, 5, 100)
    assert config.rank("user_id") < config.rank("email") < config.rank("device_id") < config.rank("anonymous_id")
    assert normalize_identifier("loyalty_id", " GOLD-7 ", "US", config) == Identifier("loyalty_id", "gold-7")
    assert normalize_identifier("email", "Test@Example.com", "US", config) is None  # junk list from the file


def test_identity_file_problems_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "identity.yaml"
    path.write_text(
        "identifier_types:\n  - {type: email, limit: 0}\n  - {type: user_id, limit: 1, normalize: lowercase}\n"
        "  - {type: user_id, limit: 2}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_identity_config(path)
    text = "\n".join(caught.value.problems)
    assert "identifier_types.0.limit" in text
    assert "user_id is built in" in text
    path.write_text("identifier_types:\n  - {type: user_id, limit: 1}\n  - {type: user_id, limit: 2}\n")
    with pytest.raises(ConfigError, match="identifier types listed more than once: user_id"):
        load_identity_config(path)


def test_a_second_user_id_is_refused_and_the_touchpoint_stays_with_the_higher_priority_identifier(store: Store) -> None:
    """The family iPad: one device, two logins; the device must not merge two customers."""
    dad = resolve_in(store, touchpoint(1, ("user_id", "dad"), ("device_id", "ipad"))).profile_id
    kid = resolve_in(store, touchpoint(2, ("user_id", "kid"), ("device_id", "ipad")))
    assert kid.created and kid.profile_id != dad
    assert [(r.identifier, r.profile_id) for r in kid.refused] == [(Identifier("device_id", "ipad"), dad)]
    assert kid.refused[0].rule == "limit: at most 1 user_id per profile"
    with store.read() as connection:
        assert counts(connection) == {"profiles": 2, "merges": 0}
        event = connection.execute(select(identity_events)).mappings().one()
    assert (event["kind"], event["profile_id"], event["other_profile_id"]) == ("refused", kid.profile_id, dad)
    assert event["identifiers"] == [["device_id", "ipad"]]
    assert event["touchpoint_id"] == derived_id("test", "2")


def test_a_shared_tablets_push_token_moves_to_whoever_signs_in_on_it_last(store: Store) -> None:
    """The family tablet: Ana's app registered its push token; Bob signs in on it. The token stayed with Ana, so her
    cart nudges showed on the tablet in Bob's hands, and his reached no device. It moves to Bob (as Braze does),
    the device itself still refused; both profiles explain the move."""
    ana = resolve_in(store, touchpoint(1, ("user_id", "ana"), ("device_id", "tablet"), ("push_token", "tok-1"))).profile_id
    bob = resolve_in(store, touchpoint(2, ("user_id", "bob"), ("device_id", "tablet"), ("push_token", "tok-1")))
    assert bob.profile_id != ana
    assert [(m.identifier, m.from_profile_id) for m in bob.moved] == [(Identifier("push_token", "tok-1"), ana)]
    assert [(r.identifier, r.profile_id) for r in bob.refused] == [(Identifier("device_id", "tablet"), ana)]
    with store.read() as connection:
        assert profile_view(connection, bob.profile_id)["identifiers"] == {
            "user_id": ["bob"], "push_token": ["tok-1"],
        }
        assert "push_token" not in profile_view(connection, ana)["identifiers"]
        for side in (ana, bob.profile_id):
            [moved] = explain(connection, side)["moved"]
            assert (moved["profile_id"], moved["other_profile_id"], moved["identifiers"]) == (bob.profile_id, ana, [["push_token", "tok-1"]])
    back = resolve_in(store, touchpoint(3, ("user_id", "ana"), ("push_token", "tok-1")))
    assert back.profile_id == ana and [m.from_profile_id for m in back.moved] == [bob.profile_id]  # and back again


def test_an_identifier_whose_type_does_not_follow_logins_stays_and_is_refused(store: Store) -> None:
    """Without `follows_last_login` (identity.yaml may drop it), a shared device's token is refused as before."""
    config = IdentityConfig.model_validate({"identifier_types": [
        {"type": "user_id", "limit": 1}, {"type": "push_token", "limit": 20}]})
    ana = resolve_in(store, touchpoint(1, ("user_id", "ana"), ("push_token", "tok-1")), config).profile_id
    bob = resolve_in(store, touchpoint(2, ("user_id", "bob"), ("push_token", "tok-1")), config)
    assert bob.moved == () and [r.profile_id for r in bob.refused] == [ana]


def test_a_new_identifier_over_the_limit_is_not_attached(store: Store) -> None:
    config = IdentityConfig.model_validate({"identifier_types": [{"type": "user_id", "limit": 1}, {"type": "email", "limit": 2}]})
    first = resolve_in(store, touchpoint(1, ("user_id", "u"), ("email", "a@x.io"), ("email", "b@x.io")), config)
    later = resolve_in(store, touchpoint(2, ("user_id", "u"), ("email", "c@x.io")), config)
    assert later.profile_id == first.profile_id
    assert [(r.identifier.value, r.profile_id, r.rule) for r in later.refused] == [
        ("c@x.io", None, "limit: at most 2 email per profile")
    ]
    with store.read() as connection:
        assert profile_view(connection, first.profile_id)["identifiers"]["email"] == ["a@x.io", "b@x.io"]


def test_a_merge_within_limits_still_happens_in_priority_order(store: Store) -> None:
    web = resolve_in(store, touchpoint(1, ("email", "sam@x.io"))).profile_id
    app = resolve_in(store, touchpoint(2, ("user_id", "sam"))).profile_id
    linked = resolve_in(store, touchpoint(3, ("anonymous_id", "cookie"), ("email", "sam@x.io"), ("user_id", "sam")))
    assert linked.profile_id == min(web, app) and linked.merged_profile_ids == (max(web, app),)
    assert linked.refused == ()


def test_alias_links_an_earlier_user_id_even_past_the_user_id_limit(store: Store) -> None:
    old = resolve_in(store, touchpoint(1, ("user_id", "old-login"))).profile_id
    new = resolve_in(store, touchpoint(2, ("user_id", "new-login"))).profile_id
    alias = resolve_in(store, touchpoint(3, ("user_id", "new-login"), ("previous_id", "old-login"), kind="alias"))
    assert alias.profile_id == old and alias.merged_profile_ids == (new,)
    with store.read() as connection:
        assert profile_view(connection, new)["identifiers"] == {"user_id": ["old-login", "new-login"]}


def test_alias_previous_id_that_is_unknown_is_an_anonymous_id(store: Store) -> None:
    anonymous = resolve_in(store, touchpoint(1, ("anonymous_id", "anon-1"))).profile_id
    alias = resolve_in(store, touchpoint(2, ("user_id", "u1"), ("previous_id", "anon-1"), kind="alias"))
    fresh = resolve_in(store, touchpoint(3, ("user_id", "u2"), ("previous_id", "never-seen"), kind="alias"))
    assert alias.profile_id == anonymous
    with store.read() as connection:
        assert profile_view(connection, fresh.profile_id)["identifiers"] == {
            "user_id": ["u2"], "anonymous_id": ["never-seen"]
        }


def test_profile_updated_at_is_processing_time_not_event_time(store: Store) -> None:
    before = utcnow()
    profile_id = resolve_in(store, touchpoint(1, ("user_id", "u"), traits={"plan": "pro"}, minutes=-600)).profile_id
    with store.read() as connection:
        row = connection.execute(select(profiles.c.updated_at, profiles.c.trait_times).where(profiles.c.profile_id == profile_id)).one()
    assert row.updated_at >= before
    assert row.trait_times == {"plan": (T0 - timedelta(minutes=600)).isoformat()}


def test_an_event_that_changes_no_trait_leaves_the_profile_untouched(store: Store) -> None:
    """A replay, or an event older than every trait it carries, is not a change: updated_at stays."""
    profile_id = resolve_in(store, touchpoint(1, ("user_id", "u"), traits={"plan": "pro"}, minutes=10)).profile_id

    def stored() -> tuple:
        with store.read() as connection:
            return tuple(connection.execute(
                select(profiles.c.updated_at, profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == profile_id)
            ).one())

    first = stored()
    resolve_in(store, touchpoint(1, ("user_id", "u"), traits={"plan": "pro"}, minutes=10))
    resolve_in(store, touchpoint(2, ("user_id", "u"), traits={"plan": "free"}, minutes=5))
    assert stored() == first
    resolve_in(store, touchpoint(3, ("user_id", "u"), traits={"plan": "pro"}, minutes=20))
    later = stored()
    assert later[0] > first[0] and later[2] == {"plan": (T0 + timedelta(minutes=20)).isoformat()}
