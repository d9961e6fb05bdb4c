"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter

EVENTS_ACCEPTED = Counter("hub_events_accepted_total", "Events committed to the inbox.", ["source"])
EVENTS_REJECTED = Counter("hub_events_rejected_total", "Items or bodies refused at ingest.", ["source", "reason"])
TOUCHPOINTS_PROCESSED = Counter("hub_touchpoints_processed_total", "Inbox rows turned into touchpoints.")
DECISIONS = Counter("hub_decisions_total", "Trigger decisions made.", ["rule"])
DELIVERY_ATTEMPTS = Counter("hub_delivery_attempts_total", "Calls to destinations by outcome.", ["channel", "outcome"])
TIMERS_SETTLED = Counter(
    "hub_timers_settled_total",
    "Absence timers the timer worker settled when they came due, by outcome (fired, cancelled, superseded, lapsed, "
    "failed); the reasons are on the timer rows. Waits the pipeline ends as events come in are counted in /api/stats.",
    ["rule", "outcome"],
)
