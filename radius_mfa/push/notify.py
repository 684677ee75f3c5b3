"""Notifiers: wake the user's device when a push starts.

A paired device learns of a pending sign-in by long-polling
``GET /v1/pending`` (see docs/device-api.yaml); a notifier is the optional
nudge on top, so that a phone in a pocket, a chat window or a pager tells the
user to open the authenticator. The engine calls every configured notifier
once per new push (not for a retried login attempt that joins one) and does
not wait on the outcome to decide anything: a notifier never raises, and a
failure is one log line (``push.notify_failed``).

Built in: ``type: webhook`` (:class:`WebhookNotifier`), an HTTP(S) call per
configured entry of ``factors.push.notify``. Placeholders in its ``url`` and
``body``: ``{user}``, ``{client}`` (the NAS's configured name), ``{push_id}``,
``{user_ip}`` (empty when unknown) and ``{number_hint}`` ("enter the number
shown on the sign-in screen" when number matching applies, else empty). They
are filled in one pass and escaped for where they land by the template the
SMS gateway provider uses too (radius_mfa.httptemplate): percent-encoded in
the URL, as the inside of a JSON string in a JSON body, form-encoded in a
form body.
The number itself is never available to a notifier: it is shown only at the
sign-in prompt, so a notification read by someone else cannot approve.

Extension points: FCM, APNs
---------------------------
Mobile push services are not built in (they need an app of one's own, with
its own server credentials). One plugs in as another class with the same
:class:`Notifier` protocol, selected by the entry's ``type:``:

1. ``radius_mfa.config.loader``: add the type to ``_NOTIFIER_TYPES`` and read its
   keys (an FCM service-account file, an APNs key file, team and key ids,
   topic) into :class:`~radius_mfa.config.schema.NotifierConfig` or a sibling
   dataclass, with the usual ``FILE:LINE: key.path`` problems.
2. Here: ``class FcmNotifier`` with ``async def notify(self, push,
   device_count) -> None`` that never raises, logs ``push.notify_failed``
   without secrets, and sends to the device tokens the app registered (a
   ``push_token`` the device would send when pairing; a store column to keep
   it). The message should carry only the push id and the client name: the
   app fetches the rest over the signed device API, which stays the only
   channel that can answer.
3. :func:`notifiers_from_config`: build it when ``config.type`` names it
   (with several kinds configured, return a small composite that calls
   each: the hub holds one notifier).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import structlog
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, gatherResults
from twisted.web.http_headers import Headers

from radius_mfa.config import NOTIFY_PLACEHOLDERS, NotifierConfig, PushConfig
from radius_mfa.delivery.base import DeliveryError
from radius_mfa.delivery.http import call, discard_body, make_agent
from radius_mfa.httptemplate import HttpTemplate
from radius_mfa.model import Push

log = structlog.get_logger("radius_mfa.push")

NUMBER_HINT = "enter the number shown on the sign-in screen"
_REASON_MAX = 200


class Notifier(Protocol):
    """Tells a user's device(s) that push ``push`` waits for an answer.
    ``device_count``: how many devices the user has paired (None: not
    counted); it goes into the log lines."""

    async def notify(self, push: Push, device_count: int | None = None) -> None:
        """Best effort: returns when done or given up; never raises."""


def placeholder_values(push: Push) -> dict[str, str]:
    """What ``{user}``, ``{client}``, ``{push_id}``, ``{user_ip}`` and
    ``{number_hint}`` stand for in a notifier's url and body."""
    return {
        "user": push.user,
        "client": push.client,
        "push_id": push.id,
        "user_ip": push.user_ip or "",
        "number_hint": NUMBER_HINT if push.number is not None else "",
    }


class _Webhook:
    """One configured webhook: its request, built from a push (pure)."""

    def __init__(self, config: NotifierConfig):
        self.config = config
        self._template = HttpTemplate(method=config.method, url=config.url, headers=config.headers,
                                      body=config.body, placeholders=NOTIFY_PLACEHOLDERS)

    def request_for(self, push: Push) -> tuple[str, str, Headers, bytes | None]:
        return self._template.request(placeholder_values(push))


class WebhookNotifier:
    """Calls each configured webhook (all at once, each within its
    ``timeout``); any 2xx answer counts as delivered."""

    def __init__(self, configs: Sequence[NotifierConfig], reactor, *, trust_root=None):
        self._hooks = [_Webhook(c) for c in configs]
        self._reactor = reactor
        self._agent = make_agent(reactor, trust_root)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.config.name for h in self._hooks)

    async def notify(self, push: Push, device_count: int | None = None) -> None:
        calls = [Deferred.fromCoroutine(self._one(hook, push, device_count)) for hook in self._hooks]
        if calls:
            await gatherResults(calls, consumeErrors=True)

    async def _one(self, hook: _Webhook, push: Push, device_count: int | None) -> None:
        name, timeout = hook.config.name, hook.config.timeout
        try:
            reason = await self._attempt(hook, push, timeout)
        except Exception as exc:          # a bug here must not reach the push
            reason = f"{type(exc).__name__}"
        if reason is None:
            log.info("push.notified", notifier=name, user=push.user, push_id=push.id, devices=device_count)
        else:
            log.warning("push.notify_failed", notifier=name, user=push.user, push_id=push.id,
                        devices=device_count, reason=reason)

    async def _attempt(self, hook: _Webhook, push: Push, timeout: float) -> str | None:
        """None when the webhook answered 2xx, else why not (one line without
        the URL, a header value or the answer's body)."""
        async def send() -> int:
            response = await call(self._agent, *hook.request_for(push))
            discard_body(response)
            return response.code

        attempt = Deferred.fromCoroutine(send())
        attempt.addTimeout(timeout, self._reactor)
        try:
            code = await attempt
        except DeliveryError as exc:
            return str(exc).splitlines()[0][:_REASON_MAX] if str(exc) else "DeliveryError"
        except (DeferredTimeout, CancelledError):
            return f"timed out after {round(timeout, 2):g} s"
        return None if 200 <= code < 300 else f"HTTP {code}"


def notifiers_from_config(push_config: PushConfig, reactor) -> Notifier | None:
    """The one notifier the push hub calls for ``factors.push.notify``: a
    :class:`WebhookNotifier` for all webhook entries, or None when nothing is
    configured (devices learn of pushes by long-polling alone). A second
    built-in type would be combined with it here (see the module docstring)."""
    unknown = sorted({n.type for n in push_config.notify} - {"webhook"})
    if unknown:
        raise ValueError(f"unknown notifier type {unknown[0]!r}")
    webhooks = [n for n in push_config.notify if n.type == "webhook"]
    return WebhookNotifier(webhooks, reactor) if webhooks else None
