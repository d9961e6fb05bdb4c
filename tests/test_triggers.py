"""The rule language: predicates, combinations, recent windows and caps, with a recorded history."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from hub.config_files import with_line
from hub.errors import ConfigError
from hub.model import Identifier, Touchpoint, WaitEnded, ordered_id
from hub.rule_predicates import Selector
from hub.rules import RuleFile, load_rules
from hub.settings import PROJECT_MAPPINGS
from hub.triggers import evaluate

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


class RecordedHistory:
    """History with fixed answers: past events by name (times, or (time, properties) pairs) and decision times."""

    def __init__(self, events: dict[str, list] | None = None, decisions: list[datetime] | None = None) -> None:
        self.documents = [
            {"touchpoint_id": f"{name}-{n}", "kind": "track", "event": name, "stage": "decision", "moment": "x",
             "occurred_at": (item[0] if isinstance(item, tuple) else item).isoformat(),
             "properties": item[1] if isinstance(item, tuple) else {}, "context": {}}
            for name, items in (events or {}).items() for n, item in enumerate(items)
        ]
        self.decisions = decisions or []

    def events(self, profile_id: str, since: datetime, until: datetime, selector: Selector | None) -> list[dict]:
        return [
            doc for doc in self.documents
            if since <= datetime.fromisoformat(doc["occurred_at"]) <= until
            and (selector is None or selector.events is None or doc["event"] in selector.events)
        ]

    def decided_between(self, profile_id: str, rule_id: str, since: datetime, until: datetime) -> list[datetime]:
        return [t for t in self.decisions if since < t < until]


def rules(*specs: dict) -> list:
    return RuleFile.model_validate({"rules": list(specs)}).rules


def tp(event: str, **properties: object) -> Touchpoint:
    return Touchpoint("tp-1", "s", "m", "track", event, "decision", "x", T0, T0, (Identifier("user_id", "u"),), properties)


RESPOND = [{"channel": "sms", "template": "t.j2"}]


@pytest.mark.parametrize(
    ("op", "value", "fires"),
    [("eq", 100, True), ("ne", 100, False), ("gt", 99, True), ("gte", 100, True), ("lt", 100, False),
     ("lte", 100, True), ("in", [1, 100], True), ("exists", True, True), ("matches", "^1", False)],
)
def test_where_predicates(op: str, value: object, fires: bool) -> None:
    rule = {"id": "r", "when": {"event": "Order Completed", "where": [{"field": "properties.total", "op": op, "value": value}]},
            "respond": RESPOND}
    assert bool(evaluate(tp("Order Completed", total=100), "p", rules(rule), RecordedHistory())) is fires


def test_comparing_different_types_does_not_fire_instead_of_crashing() -> None:
    rule = {"id": "r", "when": {"event": "E", "where": [{"field": "properties.total", "op": "gt", "value": 5}]}, "respond": RESPOND}
    assert evaluate(tp("E", total="lots"), "p", rules(rule), RecordedHistory()) == []


@pytest.mark.parametrize(("op", "value"), [("eq", 1), ("gt", 0), ("gte", 1), ("lte", 1), ("in", [1, 2])])
def test_a_boolean_is_not_a_number(op: str, value: object) -> None:
    """As in JMESPath: Python's `True == 1` would make `{op: gt, value: 0}` hold for `true`."""
    rule = {"id": "r", "when": {"event": "E", "where": [{"field": "properties.n", "op": op, "value": value}]}, "respond": RESPOND}
    assert evaluate(tp("E", n=True), "p", rules(rule), RecordedHistory()) == []
    assert len(evaluate(tp("E", n=1), "p", rules(rule), RecordedHistory())) == 1


def test_recent_window_all_and_not() -> None:
    rule = {
        "id": "r",
        "when": {"all": [{"event": "Ticket Submitted"}, {"recent": {"event": "Order Completed", "within": "30d"}},
                         {"not": {"recent": {"event": "Refund Issued", "within": "7d"}}}]},
        "respond": RESPOND,
    }
    bought = RecordedHistory({"Order Completed": [T0 - timedelta(days=10)]})
    [decision] = evaluate(tp("Ticket Submitted"), "p", rules(rule), bought)
    assert decision.evidence["recent"] == [{"event": "Order Completed", "within_seconds": 2592000.0, "seen": 1}]
    assert decision.evidence["touchpoints"] == ["tp-1", "Order Completed-0"]
    refunded = RecordedHistory({"Order Completed": [T0 - timedelta(days=10)], "Refund Issued": [T0 - timedelta(days=1)]})
    assert evaluate(tp("Ticket Submitted"), "p", rules(rule), refunded) == []
    stale = RecordedHistory({"Order Completed": [T0 - timedelta(days=31)]})
    assert evaluate(tp("Ticket Submitted"), "p", rules(rule), stale) == []


def test_the_evidence_names_only_the_touchpoints_of_the_branch_that_held() -> None:
    rule = {"id": "r", "respond": RESPOND, "when": {"any": [
        {"all": [{"count": {"event": "Product Viewed", "at_least": 2, "within": "5m"}},
                 {"recent": {"event": "Order Completed", "within": "30d"}}]},
        {"event": "Product Viewed", "where": [{"field": "properties.sku", "op": "eq", "value": "z"}]},
    ]}}
    viewed = RecordedHistory({"Product Viewed": [T0 - timedelta(minutes=1)]})  # count holds, recent does not
    [decision] = evaluate(tp("Product Viewed", sku="z"), "p", rules(rule), viewed)
    assert decision.evidence["touchpoints"] == ["tp-1"]
    assert decision.evidence["recent"][0]["seen"] == 0  # why the first branch failed stays on record


def test_cap_turns_a_second_decision_inside_the_window_into_a_capped_one() -> None:
    rule = {"id": "r", "when": {"event": "E"}, "respond": RESPOND, "cap": {"max": 1, "within": "24h"}}
    [capped] = evaluate(tp("E"), "p", rules(rule), RecordedHistory(decisions=[T0 - timedelta(hours=23)]))
    assert (capped.status, capped.evidence["cap"]) == ("capped", {"max": 1, "within_seconds": 86400.0})
    [fired] = evaluate(tp("E"), "p", rules(rule), RecordedHistory(decisions=[T0 - timedelta(hours=25)]))
    assert fired.status == "fired"



def test_a_cap_counts_a_decision_made_first_for_a_later_event_only_inside_the_window() -> None:
    """Events arrive out of order (a webhook's delay, an SDK's offline flush): the later burst decided first.
    The cap counted every decision after the window's start, so it capped the earlier burst too, however far
    apart, and its message and CRM update were lost."""
    rule = {"id": "r", "when": {"event": "E"}, "respond": RESPOND, "cap": {"max": 1, "within": "1h"}}
    [fired] = evaluate(tp("E"), "p", rules(rule), RecordedHistory(decisions=[T0 + timedelta(hours=2, minutes=30)]))
    assert fired.status == "fired"
    [capped] = evaluate(tp("E"), "p", rules(rule), RecordedHistory(decisions=[T0 + timedelta(minutes=30)]))
    assert capped.status == "capped"


@pytest.mark.parametrize(
    ("cap", "arrivals", "statuses"),
    [
        ({"max": 2, "within": "1h"}, (0, 45, 90), ["fired", "fired", "fired"]),
        ({"max": 2, "within": "1h"}, (0, 90, 45), ["fired", "fired", "fired"]),
        ({"max": 2, "within": "1h"}, (90, 0, 45), ["fired", "fired", "fired"]),
        ({"max": 2, "within": "1h"}, (0, 20, 50), ["fired", "fired", "capped"]),
        ({"max": 2, "within": "1h"}, (50, 0, 20), ["fired", "fired", "capped"]),
        ({"max": 1, "within": "1h"}, (150, 0), ["fired", "fired"]),
        ({"max": 1, "within": "1h"}, (30, 0), ["fired", "capped"]),
        ({"max": 1, "within": "1h"}, (60, 0), ["fired", "fired"]),
    ],
)
def test_a_cap_holds_back_only_what_would_put_more_than_max_in_one_window(
    cap: dict, arrivals: tuple[int, ...], statuses: list[str]
) -> None:
    """Events taken in in this order (minutes after T0), each decided with those fired before it. Counting
    decisions on either side capped the 45-minute event of 0, 90, 45 under 2 an hour: it saw both others,
    though no hour holds more than two, and in-order arrival fires all three."""
    rule = rules({"id": "r", "when": {"event": "E"}, "respond": RESPOND, "cap": cap})
    fired: list[datetime] = []
    made: list[str] = []
    for minutes in arrivals:
        at = T0 + timedelta(minutes=minutes)
        [decision] = evaluate(replace(tp("E"), occurred_at=at), "p", rule, RecordedHistory(decisions=list(fired)))
        made.append(decision.status)
        if decision.status == "fired":
            fired.append(at)
    assert made == statuses


def test_decision_ids_are_deterministic_and_ordered_by_the_event_time() -> None:
    rule = rules({"id": "r", "when": {"event": "E"}, "respond": RESPOND})
    decision_id = evaluate(tp("E"), "p", rule, RecordedHistory())[0].decision_id
    assert decision_id == evaluate(tp("E"), "p", rule, RecordedHistory())[0].decision_id
    assert decision_id == ordered_id(T0, "decision", "r", "tp-1")


def test_invalid_rule_file_reports_every_problem_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text("rules:\n  - id: Bad-Id\n    when: {event: E}\n    respond: []\n    cap: {within: soon}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    text = "\n".join(caught.value.problems)
    assert f"{path}: rules.0.id: String should match pattern" in text
    assert f"{path}: rules.0.respond: List should have at least 1 item" in text
    assert "'soon' is not a duration" in text


def test_a_mistake_inside_a_condition_is_one_problem_at_its_key_and_line(tmp_path: Path) -> None:
    """Not one per kind of condition the union could have been, and without pydantic's tags in the key, so
    `mappings check` finds its line."""
    path = tmp_path / "triggers.yaml"
    path.write_text(
        "rules:\n  - id: r\n    when:\n      all:\n        - event: E\n          where:\n"
        "            - {field: properties.path, op: equals}\n"
        "        - count: {event: V, within: 5x}\n"
        "    respond: [{channel: sms, template: t.j2}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    assert [problem.split(": ")[1] for problem in caught.value.problems] == [
        "rules.0.when.all.0.where.0.op", "rules.0.when.all.1.count.within"
    ]
    assert [with_line(problem, path).split(": ")[0] for problem in caught.value.problems] == [f"{path}:7", f"{path}:8"]


@pytest.mark.parametrize(
    ("where", "reason"),
    [({"field": "properties.path", "op": "matches", "value": "^/pricing("}, "is not a regular expression"),
     ({"field": "properties.[path"}, "invalid JMESPath expression")],
)
def test_a_predicate_that_could_never_run_is_refused_when_the_file_loads(where: dict, reason: str) -> None:
    """Found only while evaluating, it failed every event the rule saw, and those events went to quarantine."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        rules({"id": "r", "respond": RESPOND, "when": {"event": "E", "where": [where]}})
    with pytest.raises(ValueError, match="invalid JMESPath expression"):
        rules({"id": "r", "respond": RESPOND, "when": {"count": {"event": "E", "within": "5m", "distinct_by": "a.[b"}}})
    with pytest.raises(ValueError, match="to turn the rule off, set `enabled: false`"):
        rules({"id": "r", "respond": RESPOND, "when": {"event": "E"}, "cap": {"max": 0, "within": "1h"}})


def test_selectors_filter_by_moment_stage_profile_traits_and_context() -> None:
    rule = {"id": "r", "respond": RESPOND, "when": {
        "moment": "x", "stage": "decision",
        "where": [{"field": "profile.plan", "op": "eq", "value": "pro"},
                  {"field": "context.device.type", "op": "in", "value": ["ios", "android"]}]}}
    mobile = Touchpoint("tp-1", "s", "m", "track", "Cart Viewed", "decision", "x", T0, T0, (), {}, {}, {"device": {"type": "ios"}})
    assert len(evaluate(mobile, "p", rules(rule), RecordedHistory(), {"plan": "pro"})) == 1
    assert evaluate(mobile, "p", rules(rule), RecordedHistory(), {"plan": "free"}) == []
    assert evaluate(tp("Cart Viewed"), "p", rules(rule), RecordedHistory(), {"plan": "pro"}) == []


def test_a_where_function_the_events_data_does_not_suit_does_not_hold_and_raises_nothing() -> None:
    """`join()` of tags sent as one string raised out of the engine: the pipeline retried the event as a crash
    and quarantined it, and every other rule missed it too. The predicate simply does not hold for it."""
    rule = {"id": "r", "respond": RESPOND, "when": {
        "event": "Product Viewed", "where": [{"field": "join(',', properties.tags)", "op": "eq", "value": "a,b"}]}}
    assert len(evaluate(tp("Product Viewed", tags=["a", "b"]), "p", rules(rule), RecordedHistory())) == 1
    assert evaluate(tp("Product Viewed", tags="a,b"), "p", rules(rule), RecordedHistory()) == []
    counted = rules({"id": "r", "respond": RESPOND, "when": {"count": {
        "event": "Product Viewed", "at_least": 2, "within": "5m", "distinct_by": "join(',', properties.tags)"}}})
    history = RecordedHistory({"Product Viewed": [(T0 - timedelta(minutes=1), {"tags": ["a"]})]})
    assert evaluate(tp("Product Viewed", tags="b"), "p", counted, history) == []  # no value: not a distinct one


def test_exists_on_a_projection_holds_only_when_some_element_has_the_field() -> None:
    """`exists: true` on `properties.products[*].coupon` held for a cart without a single coupon: the projection
    gives `[]`, not null. A plain field sent as `[]` is still there."""
    rule = {"id": "r", "respond": RESPOND, "when": {
        "event": "Cart Viewed", "where": [{"field": "properties.products[*].coupon", "op": "exists"}]}}
    assert evaluate(tp("Cart Viewed", products=[{"sku": "a"}]), "p", rules(rule), RecordedHistory()) == []
    assert len(evaluate(tp("Cart Viewed", products=[{"sku": "a", "coupon": "X"}]), "p", rules(rule), RecordedHistory())) == 1
    plain = {"id": "r", "respond": RESPOND, "when": {"event": "Cart Viewed", "where": [{"field": "properties.tags", "op": "exists"}]}}
    assert len(evaluate(tp("Cart Viewed", tags=[]), "p", rules(plain), RecordedHistory())) == 1


def test_count_within_a_sliding_window_optionally_distinct_by_a_field() -> None:
    def rule(distinct: str | None) -> list:
        return rules({"id": "r", "respond": RESPOND, "when": {"count": {
            "event": "Product Viewed", "at_least": 2, "within": "5m", "distinct_by": distinct}}})

    same_product = RecordedHistory({"Product Viewed": [(T0 - timedelta(minutes=1), {"sku": "a"})]})
    [decision] = evaluate(tp("Product Viewed", sku="a"), "p", rule(None), same_product)
    assert decision.evidence["count"][0]["seen"] == 2
    assert decision.evidence["touchpoints"] == ["tp-1", "Product Viewed-0"]
    assert evaluate(tp("Product Viewed", sku="a"), "p", rule("properties.sku"), same_product) == []
    assert len(evaluate(tp("Product Viewed", sku="b"), "p", rule("properties.sku"), same_product)) == 1
    too_old = RecordedHistory({"Product Viewed": [(T0 - timedelta(minutes=6), {"sku": "a"})]})
    assert evaluate(tp("Product Viewed", sku="b"), "p", rule(None), too_old) == []
    assert evaluate(tp("Cart Viewed"), "p", rule(None), same_product) == []  # the current event must itself count
    without_sku = RecordedHistory({"Product Viewed": [(T0 - timedelta(minutes=1), {})]})
    assert evaluate(tp("Product Viewed", sku="a"), "p", rule("properties.sku"), without_sku) == []  # no sku: no value


def test_a_count_distinct_by_a_number_counts_7_and_7_0_as_one_value() -> None:
    """JSON has one number 7, however written, and `where`'s eq says 7 == 7.0; the count told them apart (their
    repr) and offered comparison help to a person who viewed one product twice. True is still no 1."""
    rule = rules({"id": "r", "respond": RESPOND, "when": {"count": {
        "event": "Product Viewed", "at_least": 2, "within": "5m", "distinct_by": "properties.sku"}}})
    seen_as_int = RecordedHistory({"Product Viewed": [(T0 - timedelta(minutes=1), {"sku": 7})]})
    assert evaluate(tp("Product Viewed", sku=7.0), "p", rule, seen_as_int) == []
    assert len(evaluate(tp("Product Viewed", sku=7.5), "p", rule, seen_as_int)) == 1
    seen_as_true = RecordedHistory({"Product Viewed": [(T0 - timedelta(minutes=1), {"sku": True})]})
    assert len(evaluate(tp("Product Viewed", sku=1), "p", rule, seen_as_true)) == 1

def test_a_count_holds_whichever_order_its_events_arrive_in() -> None:
    """Two products viewed a minute apart, the later taken in first (an SDK batch flushed late): taking in the
    earlier one finds the later one stored, and they make a comparison, as they would have in order. The span
    is `within` long: three views over six minutes never fall in five."""
    rule = rules({"id": "r", "respond": RESPOND, "when": {"count": {
        "event": "Product Viewed", "at_least": 2, "within": "5m", "distinct_by": "properties.sku"}}})
    later_stored = RecordedHistory({"Product Viewed": [(T0 + timedelta(minutes=1), {"sku": "b"})]})
    [decision] = evaluate(tp("Product Viewed", sku="a"), "p", rule, later_stored)
    assert decision.evidence["touchpoints"] == ["tp-1", "Product Viewed-0"]
    assert decision.evidence["count"][0]["seen"] == 2
    three = rules({"id": "r", "respond": RESPOND, "when": {"count": {"event": "Product Viewed", "at_least": 3, "within": "5m"}}})
    spread = RecordedHistory({"Product Viewed": [T0 - timedelta(minutes=3), T0 + timedelta(minutes=3)]})
    assert evaluate(tp("Product Viewed"), "p", three, spread) == []  # -3 .. +3: no five-minute span holds all three
    close = RecordedHistory({"Product Viewed": [T0 - timedelta(minutes=2), T0 + timedelta(minutes=3)]})
    assert len(evaluate(tp("Product Viewed"), "p", three, close)) == 1


def test_a_count_whose_span_ends_after_the_touchpoint_judges_its_recent_windows_where_the_span_ends() -> None:
    """high_intent_pricing as shipped: pricing pages at -9, -7 and -5 minutes and a whitepaper downloaded at -6.
    In order, the -5 page sees the download and offers nothing; taken in last, the -9 page must not either."""
    [rule] = [r for r in RuleFile.model_validate(yaml.safe_load((PROJECT_MAPPINGS / "triggers.yaml").read_text())).rules
              if r.id == "high_intent_pricing"]
    pricing = [(T0 + timedelta(minutes=m), {}) for m in (2, 4)]
    page = Touchpoint("tp-1", "s", "m", "page", "page", "consideration", "x", T0, T0, (), {"path": "/pricing"})
    history = RecordedHistory({"page": pricing, "Whitepaper Downloaded": [T0 + timedelta(minutes=3)]})
    for doc in history.documents:
        doc["properties"] = {"path": "/pricing"} if doc["event"] == "page" else {}
    assert evaluate(page, "p", [rule], history) == []
    history.documents = [doc for doc in history.documents if doc["event"] == "page"]
    assert [d.rule_id for d in evaluate(page, "p", [rule], history)] == ["high_intent_pricing"]  # no download: offer


def test_matches_uses_a_regular_expression_and_bad_operator_values_are_refused() -> None:
    rule = {"id": "r", "respond": RESPOND,
            "when": {"event": "page", "where": [{"field": "properties.path", "op": "matches", "value": "^/pricing"}]}}
    assert len(evaluate(tp("page", path="/pricing/team"), "p", rules(rule), RecordedHistory())) == 1
    assert evaluate(tp("page", path="/blog"), "p", rules(rule), RecordedHistory()) == []
    with pytest.raises(ValueError, match="`in` needs a list value"):
        rules({"id": "r", "respond": RESPOND, "when": {"event": "E", "where": [{"field": "x", "op": "in", "value": 3}]}})


ABSENCE = {"id": "abandon", "respond": RESPOND,
           "when": {"absence": {"after": {"moment": "cart_activity"}, "without": {"event": "Checkout Started"}, "within": "2m"}}}


def cart(event: str = "Product Added", at: datetime = T0, tp_id: str = "tp-1") -> Touchpoint:
    return Touchpoint(tp_id, "s", "m", "track", event, "decision", "cart_activity", at, at, ())


def test_absence_rules_arm_timers_instead_of_deciding_and_the_follow_up_cancels() -> None:
    from hub.triggers import timer_changes

    rule = rules(ABSENCE)
    assert evaluate(cart(), "p", rule, RecordedHistory()) == []
    assert timer_changes(cart(), rule).arm == (("abandon", T0 + timedelta(minutes=2)),)
    checkout = Touchpoint("tp-2", "s", "m", "track", "Checkout Started", "decision", "checkout", T0, T0, ())
    assert timer_changes(checkout, rule).cancel == (("abandon", timedelta(minutes=2)),)
    assert timer_changes(tp("Other"), rule).cancel == ()
    anything = rules({**ABSENCE, "when": {"absence": {**ABSENCE["when"]["absence"], "without": "any"}}})
    assert timer_changes(tp("Other"), anything).cancel == (("abandon", timedelta(minutes=2)),)


def test_an_expired_timer_decides_unless_the_follow_up_happened_in_time() -> None:
    from hub.triggers import evaluate_expired

    [rule] = rules(ABSENCE)
    due = T0 + timedelta(minutes=2)
    decision = evaluate_expired(rule, cart(), "p", due, RecordedHistory())
    assert not isinstance(decision, str) and decision.decided_at == due and decision.evidence["absence"]["due_at"] == due.isoformat()
    late_checkout = RecordedHistory({"Checkout Started": [T0 + timedelta(minutes=1)]})
    assert evaluate_expired(rule, cart(), "p", due, late_checkout) == WaitEnded.followed_up("Checkout Started-0")
    after_the_wait = RecordedHistory({"Checkout Started": [T0 + timedelta(minutes=3)]})
    assert not isinstance(evaluate_expired(rule, cart(), "p", due, after_the_wait), WaitEnded)


def test_absence_beside_other_conditions_checks_them_when_the_timer_fires() -> None:
    from hub.triggers import evaluate_expired

    spec = {**ABSENCE, "when": {"all": [ABSENCE["when"], {"not": {"recent": {"event": "Order Completed", "within": "1d"}}}]}}
    [rule] = rules(spec)
    assert not isinstance(evaluate_expired(rule, cart(), "p", T0 + timedelta(minutes=2), RecordedHistory()), WaitEnded)
    bought = RecordedHistory({"Order Completed": [T0 - timedelta(hours=1)]})
    assert evaluate_expired(rule, cart(), "p", T0 + timedelta(minutes=2), bought) == WaitEnded(
        "lapsed", 'fire-time conditions no longer hold: {"not": {"recent": {"event": "Order Completed", "within": "P1D"}}}')
    # "No order in the last day" is judged when the nudge would go: an order placed during the wait counts
    # (a one-click or back-office order, which is not the `without` event), one a day before the cart does not.
    waited = {**spec, "when": {"all": [{"absence": {**ABSENCE["when"]["absence"], "within": "2h"}}, spec["when"]["all"][1]]}}
    [rule] = rules(waited)
    bought_while_waiting = RecordedHistory({"Order Completed": [T0 + timedelta(minutes=30)]})
    assert evaluate_expired(rule, cart(), "p", T0 + timedelta(hours=2), bought_while_waiting).status == "lapsed"
    bought_long_before = RecordedHistory({"Order Completed": [T0 - timedelta(hours=23)]})
    assert not isinstance(evaluate_expired(rule, cart(), "p", T0 + timedelta(hours=2), bought_long_before), WaitEnded)



def test_a_count_beside_an_absence_reaches_no_further_than_the_end_of_the_wait() -> None:
    """Two carts in an hour, the second 18 minutes after the first one's wait ended: the first timer lapses
    whether its worker ran on time or after an outage in which the second cart came in."""
    from hub.triggers import evaluate_expired

    spec = {**ABSENCE, "when": {"all": [ABSENCE["when"], {"count": {"moment": "cart_activity", "at_least": 2, "within": "1h"}}]}}
    [rule] = rules(spec)
    later_cart = RecordedHistory({"Product Added": [T0 + timedelta(minutes=20)]})
    for doc in later_cart.documents:
        doc["moment"] = "cart_activity"
    assert evaluate_expired(rule, cart(), "p", T0 + timedelta(minutes=2), later_cart).status == "lapsed"
    earlier_cart = RecordedHistory({"Product Added": [T0 - timedelta(minutes=20)]})
    for doc in earlier_cart.documents:
        doc["moment"] = "cart_activity"
    assert not isinstance(evaluate_expired(rule, cart(), "p", T0 + timedelta(minutes=2), earlier_cart), WaitEnded)


def test_absence_nested_below_the_top_is_refused() -> None:
    with pytest.raises(ValueError, match="`absence` is allowed only"):
        rules({**ABSENCE, "when": {"any": [ABSENCE["when"], {"event": "E"}]}})


def test_actions_only_if_pick_the_channel_per_device() -> None:
    rule = {"id": "r", "when": {"event": "E"}, "respond": [
        {"channel": "push", "template": "p.j2", "only_if": [{"field": "context.device.type", "op": "eq", "value": "ios"}]},
        {"channel": "email", "template": "e.j2", "only_if": [{"field": "context.device.type", "op": "exists", "value": False}]},
    ]}
    [decision] = evaluate(tp("E"), "p", rules(rule), RecordedHistory())
    assert [action.channel for action in decision.actions] == ["email"]
    assert decision.evidence["only_if_left_out"] == ["push"]  # so the explanation says why there is no push


def test_the_rule_index_offers_an_event_only_the_rules_it_can_match_in_priority_order() -> None:
    from hub.rule_events import RuleIndex

    index = RuleIndex(rules(
        {"id": "named", "priority": 5, "when": {"event": ["A", "B"]}, "respond": RESPOND},
        {"id": "by_stage", "priority": 4, "when": {"stage": "decision"}, "respond": RESPOND},
        {"id": "all_pins", "priority": 3, "when": {"all": [{"recent": {"event": "C", "within": "1h"}}, {"count": {"event": "B", "within": "1h"}}]}, "respond": RESPOND},
        {"id": "any_open", "priority": 2, "when": {"any": [{"event": "A"}, {"not": {"event": "A"}}]}, "respond": RESPOND},
        {"id": "wait", "priority": 1, "when": {"absence": {"after": {"event": "C"}, "without": {"event": "D"}, "within": "2m"}}, "respond": RESPOND},
    ))
    ids = {event: [rule.id for rule in index.for_event(event)] for event in ("A", "B", "C", "D", "Z")}
    assert ids == {
        "A": ["named", "by_stage", "any_open"],
        "B": ["named", "by_stage", "all_pins", "any_open"],
        "C": ["by_stage", "any_open", "wait"],
        "D": ["by_stage", "any_open", "wait"],
        "Z": ["by_stage", "any_open"],
    }


class CountingHistory(RecordedHistory):
    """A recorded history that counts how often the store would be asked for past events."""

    reads = 0

    def events(self, profile_id: str, since: datetime, until: datetime, selector: Selector | None) -> list[dict]:
        self.reads += 1
        return super().events(profile_id, since, until, selector)


def test_a_late_event_is_evidence_again_only_where_a_rule_needs_it_not_where_it_forbids_it() -> None:
    """An order rejudges the tickets after it (its `recent`); a download does not take back a demo offer made
    without it (`not recent`: what was sent stays sent)."""
    from hub.rule_events import RuleIndex

    index = RuleIndex(rules(
        {"id": "support", "when": {"all": [{"event": "Ticket Submitted"}, {"recent": {"event": "Order Completed", "within": "30d"}}]},
         "respond": RESPOND},
        {"id": "demo", "when": {"all": [{"event": "page"}, {"not": {"recent": {"event": "Whitepaper Downloaded", "within": "30d"}}}]},
         "respond": RESPOND},
    ))
    [entry] = index.rejudged_by("Order Completed", "purchase", "purchase")
    assert (entry.rule.id, entry.at_events, entry.within) == ("support", frozenset({"Ticket Submitted"}), timedelta(days=30))
    assert index.rejudged_by("Whitepaper Downloaded", None, None) == () and index.rejudged_by("Ticket Submitted", None, None) == ()
    by_moment = RuleIndex(rules(
        {"id": "support", "when": {"all": [{"event": "Ticket Submitted"}, {"recent": {"moment": "purchase", "within": "30d"}}]},
         "respond": RESPOND},
    ))
    assert [e.rule.id for e in by_moment.rejudged_by("Subscription Renewed", "retention", "purchase")] == ["support"]
    assert by_moment.rejudged_by("Subscription Renewed", "retention", "renewal") == ()


def test_a_late_event_judges_a_count_again_once_at_the_event_that_completed_it() -> None:
    """Two views, then the order a rule also wants arrives late: judged again as they arrived, the first view
    has no second beside it yet and the second has the first, so one decision, as in order."""
    from hub.rule_events import RuleIndex
    from hub.triggers import rejudge

    [rule] = rules({"id": "r", "respond": RESPOND, "when": {"all": [
        {"count": {"event": "Product Viewed", "at_least": 2, "within": "5m"}},
        {"recent": {"event": "Order Completed", "within": "30d"}}]}})
    views = [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    history = RecordedHistory({"Product Viewed": views, "Order Completed": [T0]})
    order = Touchpoint("Order Completed-0", "s", "m", "track", "Order Completed", "purchase", "x", T0, T0, ())
    stored = {f"Product Viewed-{n}": Touchpoint(f"Product Viewed-{n}", "s", "m", "track", "Product Viewed", "decision", "x", at, at, ())
              for n, at in enumerate(views)}
    rejudged = RuleIndex([rule]).rejudged_by("Order Completed", None, None)
    decided = list(rejudge(order, "p", rejudged, history, lambda ids: {i: stored[i] for i in ids if i in stored}))
    assert [(touchpoint.touchpoint_id, decision.rule_id) for touchpoint, decision in decided] == [("Product Viewed-1", "r")]


def test_every_windowed_rule_of_an_event_filters_one_read_of_the_profiles_past() -> None:
    history = CountingHistory({"Product Viewed": [T0 - timedelta(minutes=1), T0 - timedelta(minutes=50)],
                               "Cart Viewed": [T0 - timedelta(minutes=20)]})
    fired = evaluate(tp("Product Viewed"), "p", rules(
        {"id": "viewed_thrice", "when": {"count": {"event": "Product Viewed", "at_least": 3, "within": "1h"}}, "respond": RESPOND},
        {"id": "viewed_thrice_lately", "when": {"count": {"event": "Product Viewed", "at_least": 3, "within": "10m"}}, "respond": RESPOND},
        {"id": "after_cart", "when": {"all": [{"event": "Product Viewed"}, {"recent": {"event": "Cart Viewed", "within": "30m"}}]},
         "respond": RESPOND},
        {"id": "no_recent_cart", "when": {"not": {"recent": {"event": "Cart Viewed", "within": "10m"}}}, "respond": RESPOND},
    ), history)
    assert [decision.rule_id for decision in fired] == ["viewed_thrice", "after_cart", "no_recent_cart"]
    assert history.reads == 1
    assert evaluate(tp("Product Viewed"), "p", rules({"id": "plain", "when": {"event": "Product Viewed"}, "respond": RESPOND}), history)
    assert history.reads == 1  # no windowed rule, no read
