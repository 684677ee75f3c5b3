"""The authentication pipeline: authorize → primary → second factor → decision.

Pure: no sockets, no reactor, no RADIUS. It takes an :class:`AuthRequest`
(what the protocol layer decoded), talks to the store, the primary backend and
the verifiers through their seams, reads time from the clock it was given, and
returns a :class:`Decision`. The protocol layer turns that into bytes and the
service writes the audit record.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import structlog

from radius_mfa.config import DeliveryFactorConfig, Mode, PolicyConfig
from radius_mfa.model import Attempt, Device, Push, SentCode, Token, User
from radius_mfa.primary.base import PrimaryBackend, PrimaryRequest, PrimaryResult
from radius_mfa.challenges import Stage, challenge_data, unpack_attributes
from radius_mfa.prompts import (PUSH_RATE_LIMITED_MESSAGE, RATE_LIMITED_MESSAGE, mask_destination, menu_for,
                                push_prompt, code_sent_prompt, code_sent_instruction)
from radius_mfa.directory import pinned, refresh_from_directory
from radius_mfa.lockout import Lockout
from radius_mfa.requests import (AuthRequest, Decision, classify, decode_password, is_digits,  # noqa: F401 (re-exported)
                                 split_inline, FACTOR_WORDS)
from radius_mfa.sessions import Sessions
from radius_mfa.usernames import canonical
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.base import CodeVerifier, FactorResult
from radius_mfa.verifiers.push import PushFactor
from radius_mfa.verifiers.sent_codes import Sender, SentCodeFactor, destination

log = structlog.get_logger("radius_mfa.engine")

# Seconds kept back from the client's timeout for our own answer to reach it.
DEADLINE_MARGIN = 1.0
# Methods no backend here can verify (RFC 1994 CHAP, MS-CHAP v1, EAP).
UNSUPPORTED_METHODS = frozenset({"chap", "mschap", "eap"})


class Engine:
    def __init__(self, *, store, primary: PrimaryBackend, verifiers: Sequence[CodeVerifier],
                 policy: PolicyConfig, sessions: Sessions, clock: Callable[[], float],
                 senders: Mapping[str, Sender] | None = None,
                 delivery: Mapping[str, DeliveryFactorConfig] | None = None,
                 push=None, number_matching: bool = True, app_passwords=None):
        """``delivery``: the configured code channels (``sms``, ``voice``,
        ``email``) and ``senders`` their providers; a channel is offered only
        when it has both. ``push``: the PushHub when factors.push is
        configured (radius_mfa.push.hub). ``app_passwords``: the
        AppPasswordFactor (radius_mfa.verifiers.app_password)."""
        self.pushes = PushFactor(push, store, clock, number_matching) if push is not None else None
        self.app_passwords = app_passwords
        self.store = store                      # AsyncStore
        self.codes = SentCodeFactor(store, clock, delivery, senders)
        self.primary = primary
        self.verifiers = tuple(verifiers)
        self.policy = policy
        self.sessions = sessions
        self.clock = clock
        self.lockout = Lockout(store, policy.lockout, clock)
        self.exempt_users = frozenset(canonical(u, policy.username) for u in policy.exempt_users)
        self.exempt_groups = frozenset(g.lower() for g in policy.exempt_groups)

    # --- entry point ----------------------------------------------------------
    async def handle(self, req: AuthRequest) -> Decision:
        if req.received is None:
            req = dataclasses.replace(req, received=self.clock())
        if req.name_invalid:
            # RFC 2865 names are octets: answered (not dropped, so a proxy in
            # front keeps us alive), and no different from an unknown user
            await self.primary.equalize(req.password or b"")
            return self._reject(req, Reason.UNKNOWN_USER)
        if req.method in UNSUPPORTED_METHODS:
            return self._reject(req, Reason.UNSUPPORTED_METHOD)
        name = canonical(req.user_name or "", self.policy.username)
        if not name:
            return self._reject(req, Reason.BAD_REQUEST)
        req = dataclasses.replace(req, user_name=name, sent_name=req.sent_name or req.user_name)
        if req.state is not None and req.client.mode is not Mode.SECOND_FACTOR_ONLY:
            return await self._answer_challenge(req)
        user = await self.store.get_user(req.user_name)
        if req.client.mode is Mode.SECOND_FACTOR_ONLY:
            return await self._second_factor_only(req, user)
        if req.password is None and not req.mschap:
            return self._reject(req, Reason.BAD_REQUEST, user=user)
        return await self._first_round(req, user)

    # --- stages ---------------------------------------------------------------
    async def _first_round(self, req: AuthRequest, user: User | None) -> Decision:
        if req.mschap:
            if not self.primary.supports_mschap:
                return self._reject(req, Reason.UNSUPPORTED_METHOD, user=user)
            password, answer, secret = None, None, b""
        else:
            text = decode_password(req.password)
            password, answer = split_inline(text, self.policy.delimiter, req.client.mode)
            secret = password.encode("utf-8", "surrogateescape")

        # the password is an answer too: taken and counted before it is checked
        refusal, attempt = await self._admit(user)
        if refusal is not None:
            await self.primary.equalize(secret)
            return self._reject(req, refusal, user=user)
        if attempt is not None and not req.mschap and req.client.mode is not Mode.SECOND_FACTOR_ONLY:
            decided = await self._app_password(req, user, text, attempt)
            if decided is not None:
                return decided

        result = await self.primary.authenticate(self._primary_request(
            req, user, None if req.mschap else secret))
        return await self._after_primary(req, user, result, answer, attempt)

    async def _app_password(self, req: AuthRequest, user: User, text: str,
                            attempt: Attempt) -> Decision | None:
        """The whole User-Password as one of the user's app passwords, in place
        of password and factor, whatever the primary backend; None when it is
        not one the user holds (then it is an ordinary password)."""
        factor = self.app_passwords
        ident = factor.candidate(text) if factor is not None else None
        record = await factor.held(user, ident) if ident is not None else None
        if record is None:
            return None
        result = await factor.verify(user, record, text)
        await self.lockout.settle(user, attempt, result.reason, accepted=result.ok)
        if result.ok:
            return self._accept(req, user, factor=result.factor, device=result.device)
        return self._reject(req, result.reason, user=user, factor=result.factor, device=result.device)

    async def _after_primary(self, req: AuthRequest, user: User | None, result: PrimaryResult,
                             answer: str | None, attempt: Attempt | None = None) -> Decision:
        """The password was checked (or the upstream asks for more): the second factor."""
        info = dict(result.user_info)
        if result.reason is Reason.OVERLOADED:
            # queued longer than the client waits: no answer, the NAS has given up
            await self.lockout.settle(user, attempt, Reason.OVERLOADED)
            return Decision(Verdict.FAIL, req.user_name, self.primary.name,
                            reason=Reason.OVERLOADED, user=user)
        # a right password (or an upstream that could not decide) gives its
        # attempt back; a wrong one stays counted
        await self.lockout.settle(user, attempt, None if result.ok or result.challenge is not None
                           else result.reason, accepted=False)
        if result.challenge is not None:
            return await self._relay_challenge(req, user, result)
        if not result.ok:
            return self._reject(req, result.reason, user=user, info=info)
        attributes = result.attributes
        user = await refresh_from_directory(self.store, user, info)
        info = pinned(user, info)
        if self._exempt(req, user, info):
            if user is not None:
                await self._clear_failures(user)
            return self._accept(req, user, factor="none", attributes=attributes, info=info)
        if user is None:
            # a backend that knows users the store does not (LDAP, upstream
            # RADIUS): nothing is enrolled here for them
            return await self._unenrolled(req, None, attributes, info)

        tokens = await self._usable_tokens(user)
        channels = self.codes.channels(user)
        devices = await self._devices(user)
        if req.mschap:
            # MS-CHAPv2 cannot carry a code: only the device can complete it
            # (approve/deny with the context). A user who holds a factor that
            # must be typed is refused, whatever `unenrolled` says: choosing
            # MS-CHAPv2 must not skip the token
            if devices:
                return await self._push_and_wait(req, user, attributes, info)
            if tokens or channels:
                return self._reject(req, Reason.NO_FACTOR, user=user, info=info)
            return await self._unenrolled(req, user, attributes, info)
        if not tokens and not channels and not devices:
            return await self._unenrolled(req, user, attributes, info)
        if answer is not None:
            return await self._check_answer(req, user, tokens, answer, attributes, info)
        if not tokens and not channels:
            # the one factor is the device: push at once, with the number
            # at the prompt where the client can show one
            if req.client.mode is Mode.INLINE:
                return await self._push_and_wait(req, user, attributes, info)
            return await self._push_challenge(req, user, attributes, info)
        if not tokens and not devices and len(channels) == 1:
            # the one factor is a sent code: no menu, send it now
            return await self._send_code(req, user, channels[0], attributes, info)
        if req.client.mode is Mode.INLINE:
            return self._reject(req, Reason.NO_ANSWER, user=user, info=info)
        return await self._challenge(req, user, tokens, attributes, info, push=bool(devices))

    async def _relay_challenge(self, req: AuthRequest, user: User | None,
                               result: PrimaryResult) -> Decision:
        """The upstream answered with an Access-Challenge (a new PIN, the next
        code): our own State stands for the upstream's, the prompt is its."""
        upstream = result.challenge
        data = {"stage": Stage.UPSTREAM.value,
                "upstream_state": upstream.state.hex() if upstream.state is not None else None}
        state = await self.sessions.open(req.user_name, req.client.name, ("upstream",), data)
        return Decision(Verdict.CHALLENGE, req.user_name, self.primary.name, user=user,
                        factor=None, state=state, reply_message=upstream.reply_message or "",
                        user_info=dict(result.user_info))

    async def _answer_challenge(self, req: AuthRequest) -> Decision:
        challenge, why_not = await self.sessions.take(req.state, req.user_name, req.client.name)
        user = await self.store.get_user(req.user_name)
        if challenge is None:
            if why_not is Reason.BAD_STATE and user is not None and self.pushes is not None \
                    and self._refusal(user) is None:
                joined = await self._join_push_of_used_state(req, user)
                if joined is not None:
                    return joined
            return self._reject(req, why_not, user=user)
        answer = decode_password(req.password) if req.password is not None else ""
        stage = Stage.of(challenge.data)
        if stage is not Stage.UPSTREAM:
            refusal = Reason.UNKNOWN_USER if user is None else self._refusal(user)
            if refusal is not None:
                return self._reject(req, refusal, user=user)
        answering = {Stage.UPSTREAM: self._answer_upstream, Stage.SENT_CODE: self._answer_sent_code,
                     Stage.PUSH: self._answer_push, Stage.CODE: self._answer_code}
        return await answering[stage](req, user, challenge.data, answer,
                                      unpack_attributes(challenge.data.get("attributes", [])),
                                      challenge.data.get("info", {}))

    # --- answering a challenge, one method per stage ------------------------------
    async def _answer_upstream(self, req: AuthRequest, user: User | None, data: dict, answer: str,
                               attributes, info: dict) -> Decision:
        """The upstream's own challenge (a new PIN): its answer goes back to it."""
        refusal, attempt = await self._admit(user)
        if refusal is not None:
            return self._reject(req, refusal, user=user)
        upstream_state = data.get("upstream_state")
        result = await self.primary.authenticate(self._primary_request(
            req, user, answer.encode("utf-8", "surrogateescape"),
            bytes.fromhex(upstream_state) if upstream_state else None))
        return await self._after_primary(req, user, result, None, attempt)

    async def _answer_sent_code(self, req: AuthRequest, user: User, data: dict, answer: str,
                                attributes, info: dict) -> Decision:
        return await self._check_bound_code(req, user, data, answer, attributes, info)

    async def _answer_push(self, req: AuthRequest, user: User, data: dict, answer: str,
                           attributes, info: dict) -> Decision:
        """Any answer (an empty OK too): wait for the device's approval."""
        push = await self.store.get_push(data.get("push_id", ""))
        if push is None or push.user != user.name:
            return self._reject(req, Reason.EXPIRED, user=user, factor="push", info=info)
        return await self._await_push(req, user, push, attributes, info)

    async def _answer_code(self, req: AuthRequest, user: User, data: dict, answer: str,
                           attributes, info: dict) -> Decision:
        """The menu or code prompt: a code, or a word that picks a factor."""
        tokens = await self._usable_tokens(user)
        return await self._check_answer(req, user, tokens, answer, attributes, info)

    async def _join_push_of_used_state(self, req: AuthRequest, user: User) -> Decision | None:
        """A NAS retry (new identifier) of the answer to a push prompt, whose
        State the first copy used: it joins that push, and only that one.
        The State must be one we issued to this user and client, answered
        within the client's timeout; an unknown or made-up State joins
        nothing, and the push's compare-and-set still allows one Accept."""
        used = await self.sessions.used(req.state)
        if used is None or used.user != user.name or used.client != req.client.name \
                or Stage.of(used.data) is not Stage.PUSH \
                or used.used is None or used.used < self.clock() - req.client.timeout:
            return None
        push = await self.store.get_push(used.data.get("push_id", ""))
        if push is None or push.user != user.name:
            return None
        log.info("push.joined", user=user.name, client=req.client.name, push=push.id)
        return await self._await_push(req, user, push, unpack_attributes(used.data.get("attributes", [])),
                                      used.data.get("info", {}))

    async def _second_factor_only(self, req: AuthRequest, user: User | None) -> Decision:
        """NPS has checked the password; only the second factor runs here."""
        if user is None:
            return self._reject(req, Reason.UNKNOWN_USER)
        refusal = self._refusal(user)
        if refusal is not None:
            return self._reject(req, refusal, user=user)
        if self._exempt(req, user, {}):
            return self._accept(req, user, factor="none")
        tokens = await self._usable_tokens(user)
        answer = decode_password(req.password) if req.password else None
        if (tokens or self.codes.channels(user)) and answer is not None and classify(answer) == "code":
            return await self._check_answer(req, user, tokens, answer, (), {})
        if await self._devices(user):
            # RD Gateway behind NPS: the request waits for the device
            return await self._push_and_wait(req, user, (), {})
        if not tokens and not self.codes.channels(user):
            return await self._unenrolled(req, user, (), {})
        # the out-of-band factors (push, voice) that this mode waits for are
        # not configured: nothing can complete the sign-in
        return self._reject(req, Reason.NO_FACTOR, user=user)

    async def _check_answer(self, req: AuthRequest, user: User, tokens: Sequence[Token],
                            answer: str, attributes, info: dict) -> Decision:
        kind = classify(answer)
        if kind not in FACTOR_WORDS:
            # a typed answer: an attempt is taken and counted before it is
            # checked, so a burst of guesses gets no further than the lockout
            attempt = await self.lockout.take(user)
            if attempt is None:
                return self._reject(req, Reason.LOCKED, user=user, factor=self._code_factor(tokens),
                                    info=info)
            decision = await self._check_typed(req, user, tokens, answer, attributes, info)
            await self.lockout.settle(user, attempt, decision.reason,
                               accepted=decision.verdict is Verdict.ACCEPT)
            return decision
        if kind == "push" and await self._devices(user):
            if req.client.mode is Mode.CHALLENGE:
                return await self._push_challenge(req, user, attributes, info)
            return await self._push_and_wait(req, user, attributes, info)
        if kind in self.codes.channels(user) and req.client.mode is not Mode.SECOND_FACTOR_ONLY:
            return await self._send_code(req, user, kind, attributes, info)
        # not configured, or no number, address or device for it
        return self._reject(req, Reason.NO_FACTOR, user=user, factor=kind, info=info)

    async def _check_typed(self, req: AuthRequest, user: User, tokens: Sequence[Token],
                           answer: str, attributes, info: dict) -> Decision:
        """A typed answer, its attempt taken: a sent code, else the tokens."""
        if is_digits(answer) and self.codes.configured:
            # a sent code may be shorter or longer than a token's (code_digits);
            # without a code channel configured there is none to look up
            sent = await self.codes.check(user, answer.strip())
            if sent is not None:
                return self._decide(req, user, sent, attributes, info)
        if classify(answer) == "code":
            code = answer.strip()
            for verifier in self.verifiers:
                mine = [t for t in tokens if verifier.handles(t)]
                if not mine:
                    continue
                result = await verifier.verify(user, mine, code, self.clock())
                if result is not None:
                    return self._decide(req, user, result, attributes, info)
        return self._reject(req, Reason.BAD_CODE, user=user, factor=self._code_factor(tokens),
                            info=info)

    async def _challenge(self, req: AuthRequest, user: User, tokens: Sequence[Token],
                         attributes=(), info: dict | None = None, push: bool = False) -> Decision:
        channels = self.codes.channels(user)
        factors = tuple(sorted({t.type for t in tokens})) + channels + (("push",) if push else ())
        state = await self.sessions.open(user.name, req.client.name, factors,
                                         challenge_data(attributes, info))
        return Decision(Verdict.CHALLENGE, req.user_name, self.primary.name, user=user,
                        factor=self._code_factor(tokens), state=state,
                        reply_message=menu_for(tokens, channels, user, push=push),
                        user_info=dict(info or {}))

    # --- push approval ----------------------------------------------------------
    async def _devices(self, user: User) -> list[Device]:
        return await self.pushes.devices(user) if self.pushes is not None else []

    async def _start_push(self, req: AuthRequest, user: User, number_matching: bool,
                          lifetime: float | None = None):
        return await self.pushes.start(user, client=req.client.name, client_timeout=req.client.timeout,
                                       calling_station_id=req.calling_station_id,
                                       number_matching=number_matching, lifetime=lifetime)

    def _remaining(self, req: AuthRequest) -> float:
        """Seconds this request may still wait: the client's timeout, less
        what it has used and the margin for our answer to reach it."""
        now = self.clock()
        received = req.received if req.received is not None else now
        return req.client.timeout - DEADLINE_MARGIN - (now - received)

    async def _push_challenge(self, req: AuthRequest, user: User, attributes,
                              info: dict) -> Decision:
        """Challenge mode: the push goes out now; the prompt shows its number
        (number matching) and the answer to it waits for the approval."""
        started = await self._start_push(req, user, self.pushes.number_matching)
        if started is None:
            return self._reject(req, Reason.RATE_LIMITED, user=user, factor="push", info=info,
                                reply_message=PUSH_RATE_LIMITED_MESSAGE)
        push = started.push
        data = challenge_data(attributes, info)
        data.update({"stage": Stage.PUSH.value, "push_id": push.id})
        state = await self.sessions.open(user.name, req.client.name, ("push",), data)
        prompt = push_prompt(push.number)
        return Decision(Verdict.CHALLENGE, req.user_name, self.primary.name, user=user,
                        factor="push", state=state, reply_message=prompt,
                        user_info=dict(info or {}))

    async def _push_and_wait(self, req: AuthRequest, user: User, attributes,
                             info: dict) -> Decision:
        """No prompt possible (second-factor-only, MS-CHAPv2, inline): the
        device shows approve/deny with the context, and this request waits."""
        # the push lives as long as this request waits: a late answer changes nothing
        started = await self._start_push(req, user, number_matching=False,
                                         lifetime=self._remaining(req))
        if started is None:
            # the instruction only where a password was checked first
            message = None if req.client.mode is Mode.SECOND_FACTOR_ONLY else PUSH_RATE_LIMITED_MESSAGE
            return self._reject(req, Reason.RATE_LIMITED, user=user, factor="push", info=info,
                                reply_message=message)
        return await self._await_push(req, user, started.push, attributes, info)

    async def _await_push(self, req: AuthRequest, user: User, push: Push, attributes,
                          info: dict) -> Decision:
        """Wait for the device's answer, within the client's timeout (less
        what this request has used already) and the push's own."""
        result = await self.pushes.outcome(user, push, min(self._remaining(req),
                                                           push.expires - self.clock()))
        if result.ok:
            await self._clear_failures(user)
        return self._decide(req, user, result, attributes, info)

    # --- sent codes (SMS, voice, email) ---------------------------------------
    async def _send_code(self, req: AuthRequest, user: User, channel: str, attributes,
                         info: dict) -> Decision:
        """The user asked for a code (or it is their only factor): join the
        code already on its way for this login attempt, or send one, and say
        where it went."""
        outcome = await self.codes.send(user, channel, client=req.client.name,
                                        calling_station_id=req.calling_station_id,
                                        client_timeout=req.client.timeout,
                                        deadline=max(1.0, req.client.timeout - DEADLINE_MARGIN))
        if outcome.code is None:
            message = RATE_LIMITED_MESSAGE if outcome.reason is Reason.RATE_LIMITED else None
            return self._reject(req, outcome.reason, user=user, factor=channel, info=info,
                                reply_message=message)
        return await self._code_sent(req, user, outcome.code, attributes, info)

    async def _code_sent(self, req: AuthRequest, user: User, sent: SentCode, attributes,
                         info: dict) -> Decision:
        """The answer once a code is on its way: inline, a Reject that tells
        the user what to do next; otherwise a Challenge bound to the code."""
        where = mask_destination(sent.channel, destination(user, sent.channel))
        if req.client.mode is Mode.INLINE or req.state is None and self._is_inline_request(req):
            return self._reject(
                req, Reason.CODE_SENT, user=user, factor=sent.channel, info=info,
                provider=sent.provider,
                reply_message=code_sent_instruction(where, self.policy.delimiter))
        data = challenge_data(attributes, info)
        data.update({"stage": Stage.SENT_CODE.value, "code_id": sent.id, "channel": sent.channel})
        state = await self.sessions.open(user.name, req.client.name, (sent.channel,), data)
        return Decision(Verdict.CHALLENGE, req.user_name, self.primary.name, user=user,
                        factor=sent.channel, state=state, provider=sent.provider,
                        reply_message=code_sent_prompt(where),
                        user_info=dict(info or {}))

    def _is_inline_request(self, req: AuthRequest) -> bool:
        """A challenge client that used the inline form (``password,sms``):
        answered inline, since the user typed the whole answer in one go."""
        if req.password is None:
            return False
        _, answer = split_inline(decode_password(req.password), self.policy.delimiter,
                                 req.client.mode)
        return answer is not None

    async def _check_bound_code(self, req: AuthRequest, user: User, data: dict, answer: str,
                                attributes, info: dict) -> Decision:
        """The answer to a challenge that named where a code went: that code only."""
        channel = data.get("channel")
        attempt = await self.lockout.take(user)
        if attempt is None:
            return self._reject(req, Reason.LOCKED, user=user, factor=channel, info=info)
        code = answer.strip()
        result = await self.codes.check(user, code, data.get("code_id")) if is_digits(code) else None
        decision = (self._decide(req, user, result, attributes, info) if result is not None
                    else self._reject(req, Reason.BAD_CODE, user=user, factor=channel, info=info))
        await self.lockout.settle(user, attempt, decision.reason, accepted=decision.verdict is Verdict.ACCEPT)
        return decision

    def _decide(self, req: AuthRequest, user: User, result: FactorResult, attributes,
                info: dict) -> Decision:
        """A factor's result as the engine's decision."""
        if result.ok:
            return self._accept(req, user, factor=result.factor, device=result.device,
                                attributes=attributes, info=info, provider=result.provider)
        return self._reject(req, result.reason, user=user, factor=result.factor,
                            device=result.device, info=info, provider=result.provider)

    async def _clear_failures(self, user: User) -> None:
        """A success ends the user's run of bad answers. Most users have none
        on record: then there is nothing to write, and no write lock to take
        (on SQLite every UPDATE takes it, even one that changes no row)."""
        if user.failures:
            await self.store.clear_failures(user.name)

    async def _unenrolled(self, req: AuthRequest, user: User | None, attributes,
                          info: dict) -> Decision:
        if self.policy.unenrolled == "allow":
            if user is not None:
                await self._clear_failures(user)
            return self._accept(req, user, factor="none", attributes=attributes, info=info)
        return self._reject(req, Reason.NO_FACTOR, user=user, info=info)

    # --- helpers --------------------------------------------------------------
    async def _admit(self, user: User | None) -> tuple[Reason | None, Attempt | None]:
        """Before a password is checked: why the user is refused (locked,
        disabled), or the lockout attempt it takes (None for a user the
        store does not know: nothing to count)."""
        refusal = self._refusal(user)
        if refusal is not None or user is None:
            return refusal, None
        attempt = await self.lockout.take(user)
        return (Reason.LOCKED if attempt is None else None), attempt

    def _refusal(self, user: User | None) -> Reason | None:
        """Why this user is refused whatever they send, if they are."""
        if user is None:
            return None
        if user.locked_until is not None and user.locked_until > self.clock():
            return Reason.LOCKED
        if user.disabled:
            return Reason.DISABLED
        return None

    def _exempt(self, req: AuthRequest, user: User | None, info: dict) -> bool:
        """Primary only: an exempt client or user, a member of an exempt
        directory group, or a user outside the directory's mfa_group."""
        if req.client.exempt or req.user_name in self.exempt_users:
            return True
        if info.get("mfa_required") is False:
            return True
        groups = info.get("groups") or ()
        return any(g in self.exempt_groups for g in groups)

    def _primary_request(self, req: AuthRequest, user: User | None, password: bytes | None,
                         upstream_state: bytes | None = None) -> PrimaryRequest:
        # an upstream RADIUS server gets the name as the NAS sent it (NPS
        # wants its own form, CORP\alice); the store and the directory the
        # canonical one
        name = req.sent_name if self.primary.name == "radius" and req.sent_name else req.user_name
        return PrimaryRequest(
            user_name=name, user=user, password=password, client=req.client.name,
            forward=req.forward, upstream_state=upstream_state, received=req.received,
            deadline=max(1.0, req.client.timeout - DEADLINE_MARGIN))

    async def _usable_tokens(self, user: User) -> list[Token]:
        tokens = await self.store.list_tokens(user.name)
        return [t for t in tokens if any(v.handles(t) for v in self.verifiers)]

    @staticmethod
    def _code_factor(tokens: Sequence[Token]) -> str | None:
        types = sorted({t.type for t in tokens})
        return types[0] if len(types) == 1 else None

    def _accept(self, req: AuthRequest, user: User | None, *, factor: str,
                device: str | None = None, attributes=(), info: dict | None = None,
                provider: str | None = None) -> Decision:
        return Decision(Verdict.ACCEPT, req.user_name, self.primary.name, factor=factor,
                        device=device, user=user, attributes=tuple(attributes),
                        user_info=dict(info or {}), provider=provider)

    def _reject(self, req: AuthRequest, reason: Reason, *, user: User | None = None,
                factor: str | None = None, device: str | None = None,
                info: dict | None = None, provider: str | None = None,
                reply_message: str | None = None) -> Decision:
        """``reply_message`` only for the instructions that follow a correct
        password (code sent, rate limited); every other Reject looks the same."""
        return Decision(Verdict.REJECT, req.user_name, self.primary.name, reason=reason,
                        factor=factor, device=device, user=user, user_info=dict(info or {}),
                        provider=provider, reply_message=reply_message)
