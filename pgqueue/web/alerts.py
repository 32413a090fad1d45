"""Alerts: rules kept in the database, evaluated by the serve leader, delivered to a webhook through the
transactional outbox, with a history.

Kinds (``threshold`` in brackets): ``dead_letters_above`` (a count), ``failure_rate_above`` (a percentage of
failed attempts over ``window_seconds``, 300 by default), ``oldest_queued_above`` (seconds),
``no_live_worker`` (heartbeat age in seconds past which a worker is not live; fires when none serves the queue).
A rule without a queue watches every queue together.

Each change of a rule (firing, resolved) is one row of ``pgqueue.alert_events``, written with the rule's new
state, and one outbox message (``app.publish_async``) in the same transaction: topic
``pgqueue.alert.firing`` or ``pgqueue.alert.resolved``, key ``pgqueue.alert:<rule id>`` (so a rule's changes
arrive in order), the rule's webhook as its URL. The relay (``pgqueue relay``, ``pgqueue work --relay`` or
``pgqueue serve --relay``) posts it through ``app.webhooks`` (signed when a secret is set), retries with backoff
and marks it dead after its attempts; the history reads the delivery state from the message.

::

    POST /api/v1/alerts/rules {"name": "dlq", "kind": "dead_letters_above", "threshold": 100,
                               "webhook_url": "https://hooks.example.com/pgqueue"}
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Path, Query

from pgqueue.errors import ValidationError
from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.database import Database
from pgqueue.web.models import MAX_ID, AlertEvent, AlertRule, AlertRuleCreate, AlertRulePatch
from pgqueue.web.problems import conflict, invalid, not_found, responses

if TYPE_CHECKING:
    from pgqueue.app import App

log = logging.getLogger("pgqueue.web.alerts")

router = APIRouter(prefix="/alerts", tags=["alerts"])

RuleId = Annotated[int, Path(ge=1, le=MAX_ID, description="Rule id.")]

# -- evaluation -------------------------------------------------------------------------------------------------

_WHAT = {
    "dead_letters_above": ("dead letters", "{value:.0f} (limit {threshold:.0f})"),
    "failure_rate_above": ("failure rate", "{value:.1f}% of attempts failed (limit {threshold:.1f}%)"),
    "oldest_queued_above": ("oldest queued job", "waited {value:.0f} s (limit {threshold:.0f} s)"),
    "no_live_worker": ("live workers", "{value:.0f} live (heartbeat within {threshold:.0f} s)"),
}


def is_firing(kind: str, value: float, threshold: float) -> bool:
    """no_live_worker fires when no worker is live; every other kind when its value is above the threshold."""
    return value == 0 if kind == "no_live_worker" else value > threshold


def describe(name: str, kind: str, queue: str | None, value: float, threshold: float, firing: bool) -> str:
    what, figures = _WHAT[kind]
    where = f"queue {queue}" if queue else "all queues"
    status = "FIRING" if firing else "resolved"
    return f"[{status}] {name}: {what} on {where}: {figures.format(value=value, threshold=threshold)}"


async def evaluate(db: Database, app: App) -> int:
    """Measure every enabled rule and record it; returns how many rules changed state (fired or resolved).
    Each change is published to the outbox in the transaction that records it: delivered iff recorded."""
    changed = 0
    for rule_id, name, kind, queue, threshold, _url, _was, value in await db.fetch("alert_rule_measure"):
        measured = float(value or 0.0)
        firing = is_firing(kind, measured, threshold)
        message = describe(name, kind, queue, measured, threshold, firing)
        async with db.transaction() as conn:
            rows = await db.fetch("alert_rule_record", {"id": rule_id, "value": measured, "firing": firing,
                                                        "message": message}, conn)
            if rows:
                try:
                    await publish(db, app, conn, rows[0])
                except ValidationError as err:  # a webhook URL the outbox refuses, in a rule written with SQL
                    log.error("alert %s cannot be delivered: %s", name, err)
                    await db.fetch("alert_event_undeliverable", {"id": rows[0][0], "error": str(err)[:2000]}, conn)
        if rows:
            changed += 1
            log.warning("%s", message)
    return changed


async def publish(db: Database, app: App, conn: psycopg.AsyncConnection[Any], event: tuple[Any, ...]) -> None:
    """Write the outbox message of alert ``event`` (a row of alert_rule_record) in ``conn``'s transaction."""
    (event_id, rule_id, rule_name, kind, queue, status, value, threshold, message, url, created_at) = event
    payload = {"event": f"alert.{status}", "event_id": event_id, "alert": rule_name, "kind": kind,
               "queue": queue, "status": status, "value": value, "threshold": threshold, "message": message,
               "at": created_at.isoformat()}
    published = await app.publish_async(f"pgqueue.alert.{status}", payload, key=f"pgqueue.alert:{rule_id}",
                                        url=url, conn=conn)
    await db.fetch("alert_event_sent", {"id": event_id, "outbox_id": published.id}, conn)


# -- API ----------------------------------------------------------------------------------------------------------

def _rule(row: tuple[Any, ...]) -> AlertRule:
    keys = ("id", "name", "kind", "queue", "threshold", "window_seconds", "webhook_url", "enabled", "firing",
            "last_value", "last_evaluated_at", "changed_at", "created_at")
    return AlertRule(**dict(zip(keys, row, strict=True)))


@router.get("/rules", response_model=list[AlertRule], summary="Alert rules", responses=responses(401, 403))
async def list_rules(svc: Annotated[Services, Depends(require(Scope.READ))]) -> list[AlertRule]:
    return [_rule(row) for row in await svc.db.fetch("alert_rule_list")]


@router.post("/rules", status_code=201, response_model=AlertRule, summary="Create an alert rule",
             responses=responses(401, 403, 409, 422))
async def create_rule(body: AlertRuleCreate, svc: Annotated[Services, Depends(require(Scope.ADMIN))]
                      ) -> AlertRule:
    if body.kind.value == "failure_rate_above" and body.threshold > 100:
        raise invalid("threshold", "a failure rate is a percentage: at most 100")
    params = body.model_dump()
    params["kind"] = body.kind.value
    rows = await svc.db.fetch("alert_rule_insert", params)
    if not rows:
        raise conflict(f"an alert rule named {body.name!r} exists already")
    return _rule(rows[0])


@router.patch("/rules/{rule_id}", response_model=AlertRule, summary="Enable or disable an alert rule",
              responses=responses(401, 403, 404, 422))
async def patch_rule(rule_id: RuleId, body: AlertRulePatch, svc: Annotated[Services, Depends(require(Scope.ADMIN))]
                     ) -> AlertRule:
    rows = await svc.db.fetch("alert_rule_set_enabled", {"id": rule_id, "enabled": body.enabled})
    if not rows:
        raise not_found(f"no alert rule with id {rule_id}")
    return _rule(rows[0])


@router.delete("/rules/{rule_id}", response_model=AlertRule, summary="Delete an alert rule (its history stays)",
               responses=responses(401, 403, 404, 422))
async def delete_rule(rule_id: RuleId, svc: Annotated[Services, Depends(require(Scope.ADMIN))]) -> AlertRule:
    rows = [r for r in await svc.db.fetch("alert_rule_list") if r[0] == rule_id]
    if not rows or not await svc.db.fetch("alert_rule_delete", {"id": rule_id}):
        raise not_found(f"no alert rule with id {rule_id}")
    return _rule(rows[0])


@router.get("/events", response_model=list[AlertEvent], summary="Alert history, newest first",
            responses=responses(401, 403, 422))
async def list_events(svc: Annotated[Services, Depends(require(Scope.READ))],
                      before: Annotated[int | None, Query(ge=1, le=MAX_ID,
                                                          description="Only events older than this id.")] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[AlertEvent]:
    keys = ("id", "rule_id", "rule_name", "kind", "queue", "status", "value", "threshold", "message",
            "created_at", "delivery", "attempts", "delivered_at", "last_error", "outbox_id")
    rows = await svc.db.fetch("alert_event_list", {"before": before, "limit": limit})
    return [AlertEvent(**dict(zip(keys, row, strict=True))) for row in rows]
