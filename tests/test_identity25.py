"""Identity and forgetting, from the twenty-fifth session's audit: a forgotten email typed decomposed (NFD)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from hub.clock import utcnow
from hub.model import Identifier
from hub.pii import holds_values, mask_text, mask_traits, without_values
from hub.store import touchpoints
from hub.store.forget import forget
from hub.store.profile_views import profile_view
from tests.conftest import message
from tests.test_absence_timers import accept, hub_on
from tests.test_forget_messages import profile

NFC, NFD = "jos\u00e9@x.io", "jose\u0301@x.io"


def test_a_forgotten_email_typed_decomposed_does_not_come_back_as_the_next_profiles_trait(tmp_path: Path) -> None:
    """José is forgotten; his address is blocked as the identifier holds it (NFC). An old install sent an identify
    with it typed with a combining accent (NFD, as macOS input gives it): the identifier was read as NFC and
    refused, but the traits were compared without NFC, so `traits.email` kept the forgotten address, on a new
    profile and on its stored event."""
    hub = hub_on(tmp_path)
    now = utcnow()
    accept(hub, message("identify", userId="u-jose", traits={"email": NFC}, timestamp=(now - timedelta(hours=1)).isoformat()))
    with hub.store.write() as connection:
        forget(connection, profile(hub, "email", NFC), utcnow(), block_identifiers=True)
    accept(hub, message("identify", userId="u-new", traits={"email": NFD, "first_name": "J"}, timestamp=now.isoformat()))
    new = profile(hub, "user_id", "u-new")
    with hub.store.read() as connection:
        traits = profile_view(connection, new)["traits"]
        [stored] = touchpoints.search(connection, limit=5, profile_id=new)
    assert traits.get("first_name") == "J" and "email" not in traits, traits
    assert "email" not in stored["traits"], stored["traits"]


def test_an_address_typed_decomposed_is_found_in_traits_and_bodies_as_its_identifier() -> None:
    """The same comparison for what masks a profile's traits and log lines and scans raw bodies: NFD text was
    missed, and shown or kept whole."""
    erased = {NFC}
    assert without_values({"email": NFD, "name": "J"}, erased) == {"name": "J"}
    assert holds_values('{"traits": {"email": "' + NFD + '"}}', erased)
    assert mask_traits({"email": NFD}, [Identifier("email", NFC)], "US")["email"] == "j***@x.io"
    assert mask_text(f"sent to {NFD}") == "sent to j***@x.io"
