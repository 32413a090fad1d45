"""Alerts: rules kept in the database, evaluated by the serve leader, fired to a webhook, with a history.

Kinds (``threshold`` in brackets): ``dead_letters_above`` (a count), ``failure_rate_above`` (a percentage of
failed attempts over ``window_seconds``, 300 by default), ``oldest_queued_above`` (seconds),
``no_live_worker`` (heartbeat age in seconds past which a worker is not live; fires when none serves the queue).
A rule without a queue watches every queue together.

Each change of a rule (firing, resolved) is one row of ``pgqueue.alert_events``, written in the same statement
as the rule's new state. That row is also the delivery: ``deliver_due`` posts it as JSON to the rule's webhook,
retries with exponential backoff (1 s, 2 s, 4 s ... at most 10 min) and marks it failed after
``webhook_attempts`` tries. When the transactional outbox (issue 4) lands, firing should enqueue into it instead.

::

    POST /api/v1/alerts/rules {"name": "dlq", "kind": "dead_letters_above", "threshold": 100,
                               "webhook_url": "https://hooks.example.com/pgqueue"}
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from pgqueue.web.access import Services, require
from pgqueue.web.auth import Scope
from pgqueue.web.database import Database
from pgqueue.web.models import MAX_ID, AlertEvent, AlertRule, AlertRuleCreate, AlertRulePatch
from pgqueue.web.problems import conflict, invalid, not_found, responses

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


async def evaluate(db: Database) -> int:
    """Measure every enabled rule and record it; returns how many rules changed state (fired or resolved)."""
    changed = 0
    for rule_id, name, kind, queue, threshold, _url, _was, value in await db.fetch("alert_rule_measure"):
        measured = float(value or 0.0)
        firing = is_firing(kind, measured, threshold)
        message = describe(name, kind, queue, measured, threshold, firing)
        rows = await db.fetch("alert_rule_record", {"id": rule_id, "value": measured, "firing": firing,
                                                    "message": message})
        if rows and rows[0][0]:
            changed += 1
            log.warning("%s", message)
    return changed


# -- delivery -----------------------------------------------------------------------------------------------------

Post = Callable[[str, bytes, float], None]


def post_json(url: str, body: bytes, timeout: float) -> None:
    """POST ``body`` (JSON) to ``url``; raises OSError (urllib's errors included) unless it answers 2xx."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pgqueue-alerts"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise OSError(f"webhook answered HTTP {response.status}")


def backoff(attempt: int) -> float:
    return float(min(600, 2 ** max(0, attempt - 1)))


async def deliver_due(db: Database, *, timeout: float = 5.0, max_attempts: int = 8, post: Post = post_json,
                      limit: int = 50) -> int:
    """Post due alert events to their webhooks; returns how many were delivered."""
    delivered = 0
    lease = timeout * 2 + 5
    for row in await db.fetch("alert_event_claim", {"limit": limit, "lease": lease}):
        (event_id, rule_name, kind, queue, status, value, threshold, message, url, created_at, attempts) = row
        body = json.dumps({"event_id": event_id, "alert": rule_name, "kind": kind, "queue": queue,
                           "status": status, "value": value, "threshold": threshold, "message": message,
                           "at": created_at.isoformat(), "attempt": attempts}).encode()
        try:
            await asyncio.to_thread(post, url, body, timeout)
        except (OSError, ValueError) as err:
            give_up = attempts >= max_attempts
            log.warning("alert %s: webhook delivery %d failed (%s)%s", event_id, attempts, err,
                        "; giving up" if give_up else "")
            await db.fetch("alert_event_failed", {"id": event_id, "error": str(err)[:1000],
                                                  "give_up": give_up, "delay": backoff(attempts)})
            continue
        await db.fetch("alert_event_delivered", {"id": event_id})
        delivered += 1
    return delivered


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
            "created_at", "delivery", "attempts", "delivered_at", "last_error")
    rows = await svc.db.fetch("alert_event_list", {"before": before, "limit": limit})
    return [AlertEvent(**dict(zip(keys, row, strict=True))) for row in rows]
