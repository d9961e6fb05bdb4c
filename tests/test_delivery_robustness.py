"""The delivery engine keeps going, and sends each message once, when a provider, a connector or a lease misbehaves."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from connectors.base import Destination, load_registry
from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.delivery import DeliveryEngine
from hub.delivery_record import RECORD_FAILED
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook, check_destination_ids, load_policy_file
from hub.errors import ConfigError, DeliveryError, DeliveryFailure, RetryableDeliveryError
from hub.mapping_check import check_folder
from hub.model import Delivery, PlannedDelivery, ProviderStatus, SendResult
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS, HubSettings
from hub.store import Store, delivery_replay, outbox, withdrawals
from hub.store.delivery_log import search as search_delivery_log
from hub.store.delivery_log import unrouted
from hub.store.schema import deliveries
from hub.store.sends_in_flight import AttemptRecord, AttemptResult, record_attempts
from tests.conftest import ADMIN_TOKEN, RunningHub, make_settings, support_ticket

MAIL_ID = "0190f4e2-7a1b-8c3d-9e4f-5a6b7c8d9e0f"  # delivery ids are 36-character UUIDs
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


class _NoConfig(BaseModel):
    pass


class FlawedPager(Destination):
    """A third-party connector with the bugs connectors ship, one per kind of target: its `classify` reads an
    attribute only its SDK's HTTP errors have (a network error makes it raise), it returns its SDK's own answer
    instead of a SendResult, its response summary carries the SDK's datetime (which JSON cannot hold), or its
    send takes longer than a lease. `sent` lists the pages the provider took."""

    slug = "flawed_pager"
    title = "Flawed pager"
    channel = "sms"
    Config = _NoConfig

    def __init__(self, sent: list[str] | None = None, send_seconds: float = 0.0) -> None:
        super().__init__(self.slug, _NoConfig())
        self.sent = [] if sent is None else sent
        self.send_seconds = send_seconds

    def send(self, delivery: Delivery) -> Any:
        if delivery.target == "unreachable":
            raise ConnectionResetError("peer reset")
        time.sleep(self.send_seconds)
        self.sent.append(delivery.target)
        page_id = f"page-{delivery.target}-{len(self.sent)}"
        if delivery.target == "sdk-answer":
            return {"id": page_id}
        if delivery.target == "dated":
            return SendResult("sent", page_id, {"accepted_at": datetime.now(timezone.utc)})
        return SendResult("sent", page_id)

    def classify(self, error: Exception) -> DeliveryError:
        return RetryableDeliveryError(DeliveryFailure(f"pager.{error.response.status_code}", str(error)))  # type: ignore[attr-defined]


def pager_engine(store: Store, pager: Destination, lease_seconds: float = 0.5, **settings: Any) -> DeliveryEngine:
    hub_settings = HubSettings(_env_file=None, retry_base_delay_seconds=0.01, retry_max_delay_seconds=0.05, **settings)  # type: ignore[call-arg]
    return DeliveryEngine(store, {pager.destination_id: pager}, PolicyBook(DeliveryPolicyFile(), hub_settings),
                          batch_size=16, lease=timedelta(seconds=lease_seconds), concurrency=4)


def plan_pages(store: Store, *targets: str) -> None:
    with store.write() as connection:
        outbox.plan(connection, [
            PlannedDelivery(target, "decision-" + target, "profile-" + target, "sms", FlawedPager.slug, target,
                            {"body": "Hi"})
            for target in targets
        ], utcnow())


def drive(*engines: DeliveryEngine, seconds: float, until: Callable[[], bool] = lambda: True) -> list[BaseException]:
    """Call each engine's step in turn, as their workers do (a failing step is kept and retried), for `seconds`
    and then until `until()` holds, 10 s at most."""
    errors: list[BaseException] = []
    started = time.monotonic()
    while time.monotonic() < started + seconds or (not until() and time.monotonic() < started + 10):
        for engine in engines:
            try:
                engine.run_once()
            except Exception as exc:  # noqa: BLE001 - the worker's loop does the same
                errors.append(exc)
        time.sleep(0.01)
    return errors


def delivery_log(store: Store) -> dict[str, dict[str, Any]]:
    with store.read() as connection:
        return {item["delivery_id"]: item for item in search_delivery_log(connection, limit=100)}


def statuses(store: Store) -> dict[str, str]:
    with store.read() as connection:
        return dict(connection.execute(select(deliveries.c.delivery_id, deliveries.c.status)).all())


# 1. What a provider says is recorded as the database can take it; a batch whose record fails anyway is
#    recorded one outcome at a time.

@BOTH_DATABASES
def test_a_provider_error_with_a_nul_byte_is_recorded_and_each_sms_of_its_batch_sent_once(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """PostgreSQL's text refuses a NUL byte: a Twilio error message ending in one failed the record of the whole
    batch, and the SMS Twilio accepted beside it was sent again every time the lease ran out."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), database_url=database_url, lease_seconds=0.5))
    sandbox.twilio.fail_next(503, code=20500, message="Service unavailable\x00", times=1)
    with hub.store.write() as connection:
        outbox.plan(connection, [
            PlannedDelivery(delivery_id, "decision-" + delivery_id, "profile", "sms", "twilio_sms", phone, {"body": "Hi"})
            for delivery_id, phone in (("d-ok", "+14155550100"), ("d-nul", "+14155550101"))
        ], utcnow())
    try:
        errors = drive(hub.delivery, seconds=2.0, until=lambda: set(statuses(hub.store).values()) == {"sent"})
        log = delivery_log(hub.store)
    finally:
        hub.delivery.close()
        hub.store.dispose()
    assert set(Counter(m["to"] for m in sandbox.twilio.messages).values()) == {1}  # each person got it once
    assert {delivery_id: item["status"] for delivery_id, item in log.items()} == {"d-ok": "sent", "d-nul": "sent"}
    [failed] = [attempt for item in log.values() for attempt in item["attempt_log"] if attempt["outcome"] == "retryable"]
    assert failed["error_class"] == "twilio.20500" and "\x00" not in failed["error_message"]
    assert errors == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_email_message_id_longer_than_its_column_is_recorded_cut_and_the_email_sent_once(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """The email's provider id is its Message-ID, `<delivery id@sender domain>`; PostgreSQL enforces the 100
    characters of its column, so with a long sender domain the record of every batch holding an email failed,
    and each email was sent again every time its lease ran out."""
    domain = "notifications.customer-engagement.eu-west-1.mail.example-corporation.com"  # 72 characters
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), database_url=database_url, lease_seconds=0.5,
                            email_from=f"Hub <hub@{domain}>"))
    with hub.store.write() as connection:
        outbox.plan(connection, [PlannedDelivery(MAIL_ID, "decision", "profile", "email", "email_smtp",
                                                 "jane@example.com", {"subject": "Hi", "body": "Hello"})], utcnow())
    try:
        errors = drive(hub.delivery, seconds=2.0, until=lambda: statuses(hub.store) == {MAIL_ID: "sent"})
        [email] = delivery_log(hub.store).values()
    finally:
        hub.delivery.close()
        hub.store.dispose()
    assert len(sandbox.smtp.received) == 1
    assert email["status"] == "sent"
    assert email["provider_message_id"] == f"<{MAIL_ID}@{domain}>"[:100]
    assert errors == []


@BOTH_DATABASES
def test_a_batch_whose_record_fails_is_recorded_one_by_one_and_only_the_bad_row_loses_the_providers_answer(
    store: Store
) -> None:
    """A response summary JSON cannot hold (the SDK's datetime) failed the record of the whole batch: every page
    of it, the good one too, was sent again each time the lease ran out, and the worker raised batch after
    batch. Recorded one by one, the good page keeps its record and the bad one is logged as sent, without
    the provider's answer, and is not sent again."""
    pager = FlawedPager()
    plan_pages(store, "reachable", "dated")
    engine = pager_engine(store, pager)
    try:
        errors = drive(engine, seconds=1.5, until=lambda: set(statuses(store).values()) == {"sent"})
    finally:
        engine.close()
    log = delivery_log(store)
    assert sorted(pager.sent) == ["dated", "reachable"]  # each page sent once
    assert log["reachable"]["status"] == "sent" and log["reachable"]["provider_message_id"].startswith("page-reachable")
    [attempt] = log["dated"]["attempt_log"]
    assert (log["dated"]["status"], attempt["outcome"], attempt["error_class"]) == ("sent", "sent", RECORD_FAILED)
    assert "TypeError" in attempt["error_message"] and attempt["provider_message_id"] is None
    assert errors == []


# 2. A connector's bug fails its own delivery, retryably, not the record of the batch.

@pytest.mark.parametrize("flawed, error_class", [
    ("unreachable", "unexpected.AttributeError"),  # its classify raised
    ("sdk-answer", "unexpected.TypeError"),  # it returned no SendResult
])
def test_a_connector_bug_fails_its_own_delivery_as_retryable_not_the_record_of_the_batch(
    store: Store, flawed: str, error_class: str
) -> None:
    """`attempt` never raises, yet a `classify` that raised, or a send that returned no SendResult, escaped it:
    the batch's outcomes were dropped, and the page the provider accepted beside it was sent again each time
    the lease ran out."""
    pager = FlawedPager()
    plan_pages(store, "reachable", flawed)
    engine = pager_engine(store, pager, delivery_max_attempts=2)
    try:
        errors = drive(engine, seconds=1.0, until=lambda: statuses(store)[flawed] == "dead")
    finally:
        engine.close()
    log = delivery_log(store)
    assert pager.sent.count("reachable") == 1
    assert log["reachable"]["status"] == "sent"
    assert log[flawed]["status"] == "dead"  # retried, then dead-lettered: replayable once the connector is fixed
    assert [(a["outcome"], a["error_class"]) for a in log[flawed]["attempt_log"]] == [("retryable", error_class)] * 2
    assert errors == []


# 4. A send that outlives its lease keeps it.

def test_a_send_longer_than_its_lease_is_not_claimed_and_sent_again_by_another_worker(tmp_path: Path) -> None:
    """The lease was never renewed while a send was in flight: a page that took longer than the lease was
    claimed by the other worker (or the same one) and sent a second time beside the first."""
    store = Store(f"sqlite:///{tmp_path}/hub.db")
    store.migrate()
    sent: list[str] = []
    workers = [pager_engine(store, FlawedPager(sent, send_seconds=1.2), lease_seconds=0.5) for _ in range(2)]
    plan_pages(store, "slow")
    try:
        errors = drive(*workers, seconds=2.0, until=lambda: statuses(store) == {"slow": "sent"})
    finally:
        for worker in workers:
            worker.close()
    try:
        assert sent == ["slow"]
        assert statuses(store) == {"slow": "sent"}
        assert errors == []
    finally:
        store.dispose()


def test_a_claim_leaves_out_the_deliveries_the_worker_still_has_in_flight(store: Store) -> None:
    """A delivery withdrawn and replayed while its send is in flight has no lease to renew: the worker's next
    claim took it again, and the worker sent it twice at once."""
    plan_pages(store, "in-flight", "due")
    now = utcnow()
    with store.write() as connection:
        outbox.claim_due(connection, 10, now, timedelta(seconds=60))
        withdrawals.withdraw(connection, ["in-flight"], now, "forgotten meanwhile")
        delivery_replay.replay(connection, "in-flight", now, unrouted)
        outbox.defer(connection, "due", now)
        claimed = outbox.claim_due(connection, 10, now, timedelta(seconds=60), held=frozenset({"in-flight"}))
    assert [delivery.delivery_id for delivery in claimed] == ["due"]


# 5. A policy for a destination id nothing has is refused.

def test_a_delivery_policy_for_a_misspelt_destination_id_is_refused_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    """A misspelt `twilo_sms:` was accepted in silence: the rate limit and retry budget ops meant for Twilio
    never applied."""
    (tmp_path / "delivery.yaml").write_text(
        "destinations:\n  twilo_sms:\n    rate_limit: {per_second: 1}\n  chat_webhook:\n    max_in_flight: 4\n"
    )
    policy_file = load_policy_file(tmp_path)
    with pytest.raises(ConfigError) as refused:
        check_destination_ids(policy_file, {"twilio_sms", "chat_webhook"})
    assert refused.value.problems == [
        "delivery.yaml: destinations.twilo_sms: no such destination (correct the id, or remove its entry); "
        "known: chat_webhook, twilio_sms"
    ]
    check_destination_ids(load_policy_file(PROJECT_MAPPINGS), {"twilio_sms", "chat_webhook", "outbound_webhook", "email_smtp"})


def test_a_hub_refuses_to_start_with_a_policy_for_a_misspelt_destination_id(tmp_path: Path, mappings_dir: Path) -> None:
    """The same at start-up, beside every other configuration problem (hub/runtime.py calls the check)."""
    (mappings_dir / "delivery.yaml").write_text("destinations:\n  twilo_sms:\n    retry: {max_attempts: 2}\n")
    with pytest.raises(ConfigError) as refused:
        Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    assert any(problem.startswith("delivery.yaml: destinations.twilo_sms: no such destination")
               for problem in refused.value.problems)
    _, checked = check_folder(mappings_dir, load_registry())  # `touchhub mappings check` says so before a start
    assert any("destinations.twilo_sms: no such destination" in problem for problem in checked)


# A replayed delivery and its old message's callbacks.

@pytest.mark.hub_settings(delivery_max_attempts=2)
def test_a_late_callback_about_the_message_before_a_replay_does_not_settle_the_replayed_delivery(
    running_hub: RunningHub
) -> None:
    """A replayed delivery kept the old message's provider id while it was due again, and after attempts that
    failed: a late repeat of that message's `undelivered` callback found it by the id and settled it `failed`,
    as if the replay had been sent and refused."""
    twilio = running_hub.sandbox.twilio
    running_hub.send(*support_ticket("u-replayed", {"phone": "+14155550133"}))
    running_hub.settle()
    [old] = twilio.messages
    assert twilio.post_status(old["sid"], "undelivered", error_code=30003).status_code == 200
    [failed] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    assert failed["status"] == "failed"

    twilio.fail_next(503, code=20500, message="Service unavailable", times=2)
    replayed = running_hub.client.post(f"/api/deliveries/{failed['delivery_id']}/replay",
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert replayed.status_code == 200
    running_hub.settle()
    assert twilio.post_status(old["sid"], "undelivered", error_code=30003).status_code == 200  # Twilio's repeat

    [after] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    assert (after["status"], after["provider_message_id"]) == ("dead", None)
    assert [a["provider_message_id"] for a in after["attempt_log"]] == [old["sid"], None, None]


def test_a_replay_forgets_the_old_messages_provider_id_and_status(store: Store) -> None:
    """Between a replay and its first attempt, the old message's late callback found the delivery due again
    and settled it, so the replay was never sent."""
    plan_pages(store, "replayed")
    now = utcnow()
    with store.write() as connection:
        [claimed] = outbox.claim_due(connection, 1, now, timedelta(seconds=60))
        record_attempts(connection, [AttemptResult(claimed, AttemptRecord(
            now, 1.0, "sent", "SM-old", None, None, {}, {}), "sent", None)])
        outbox.apply_provider_status(connection, FlawedPager.slug, ProviderStatus("SM-old", "undelivered", "failed"), now)
        assert delivery_replay.replay(connection, "replayed", now, unrouted) == "failed"
        late = outbox.apply_provider_status(connection, FlawedPager.slug, ProviderStatus("SM-old", "undelivered", "failed"), now)
    assert late is None  # held for a send that never comes, not applied to the replay
    assert statuses(store) == {"replayed": "pending"}
