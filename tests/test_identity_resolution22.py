"""Which identifiers an alias links past the limits, and where a new push token past the limit goes (audit 22)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.store import Store
from hub.store.identity_explain import explain
from hub.store.profile_views import profile_view
from hub.store.schema import deliveries
from tests.conftest import message, support_ticket
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_identity_edges import profile
from tests.test_push_tokens21 import seen


@BOTH_DATABASES
def test_an_alias_keeps_the_limits_for_the_shared_tablets_anonymous_id_it_carries(tmp_path: Path, database_url: str) -> None:
    """X is signed in on the family tablet; Y signs up on it, and the SDK's alias carries the tablet's
    anonymousId, as analytics.js puts it on every call. The alias lifted the limits for every identifier it
    carried, so the tablet's anonymousId merged Y into X's profile: user_ids x and y, and Y's messages to x@x.io.
    The alias still links what it names, Y's previousId and userId, and the tablet stays X's."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="x", anonymousId="tablet", traits={"email": "x@x.io"}))
        accept(hub, message("alias", userId="y", previousId="y-old-login", anonymousId="tablet"))
        x, y = profile(hub, "user_id", "x"), profile(hub, "user_id", "y")
        assert y is not None and y != x
        with hub.store.read() as connection:
            ys = profile_view(connection, y)
            xs = profile_view(connection, x)
        assert ys is not None and ys["identifiers"] == {"user_id": ["y"], "anonymous_id": ["y-old-login"]}
        assert xs is not None and xs["identifiers"]["anonymous_id"] == ["tablet"]
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_a_signed_out_app_users_new_push_token_past_the_limit_takes_the_oldest_ones_place(store: Store) -> None:
    """A signed-out app user's events carry only their anonymousId and the token. The push token ranks above
    anonymous_id, so the new token anchored a profile of its own and the person's anonymousId was refused as
    over the push-token limit: the third token (limit two) started a new profile and nothing was evicted."""
    for day, token in enumerate(["first-phone", "tablet", "new-phone"]):
        last = seen(store, day, ("anonymous_id", "app-install"), ("push_token", token))
    assert not last.created and last.refused == ()
    with store.read() as connection:
        graph = explain(connection, last.profile_id)
    assert graph is not None
    held = {(m["type"], m["value"]) for m in graph["identifiers"]}
    assert held == {("anonymous_id", "app-install"), ("push_token", "tablet"), ("push_token", "new-phone")}
    assert [gone["identifiers"] for gone in graph["detached"]] == [[["push_token", "first-phone"]]]


def test_an_email_refused_as_another_persons_is_not_her_email_trait_nor_on_her_crm_lead(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana's identify carries Bo's email (a family address, a typo): the link is refused, the email stays Bo's.
    The whole `traits` object was written onto Ana's profile all the same, so her `email` trait was bo@x.io and
    the post_purchase_support CRM update wrote Bo's address onto Ana's Lead."""
    hub = hub_on(tmp_path, **sandbox.settings_overrides())
    try:
        accept(hub, message("identify", userId="bo", traits={"email": "bo@x.io"}))
        accept(hub, *support_ticket("ana", {"email": "bo@x.io", "first_name": "Ana", "phone": "+14155550142"}))
        ana = profile(hub, "user_id", "ana")
        assert ana is not None and ana != profile(hub, "email", "bo@x.io")
        with hub.store.read() as connection:
            view = profile_view(connection, ana)
            crm = connection.execute(
                select(deliveries.c.content).where(deliveries.c.profile_id == ana, deliveries.c.channel == "crm")
            ).scalar_one()
        assert view is not None and view["traits"].get("email") is None
        assert view["traits"]["first_name"] == "Ana"  # the rest of her traits are hers
        assert "bo@x.io" not in repr(crm)
    finally:
        hub.store.dispose()
