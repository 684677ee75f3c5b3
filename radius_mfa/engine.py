"""The authentication pipeline: authorize → primary → second factor → decision.

Pure: no sockets, no reactor, no RADIUS. It takes an :class:`AuthRequest`
(what the protocol layer decoded), talks to the store, the primary backend and
the factors through their seams, reads time from the clock it was given, and
returns a :class:`Decision`. The protocol layer turns that into bytes and the
service writes the audit record. The rounds of the out-of-band and sent
factors live in radius_mfa.flows; prompts in radius_mfa.prompts; what a
pending challenge keeps in radius_mfa.challenges.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import structlog

from radius_mfa.challenges import Stage, challenge_data, unpack_attributes
from radius_mfa.config import DeliveryFactorConfig, Mode, PolicyConfig
from radius_mfa.directory import pinned, record_directory_user, refresh_from_directory
from radius_mfa.flows import PickedFlow
from radius_mfa.flows.push import PushFlow
from radius_mfa.flows.sent_code import SentCodeFlow
from radius_mfa.lockout import Lockout
from radius_mfa.model import Attempt, Token, User
from radius_mfa.primary.base import PrimaryBackend, PrimaryRequest, PrimaryResult
from radius_mfa.prompts import enrol_instruction, menu_for
from radius_mfa.requests import (DEADLINE_MARGIN, FACTOR_WORDS, AuthRequest, Decision,  # noqa: F401 (re-exported)
                                 Decisions, classify, decode_password, is_digits, split_inline)
from radius_mfa.sessions import Sessions
from radius_mfa.usernames import canonical
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.base import CodeVerifier
from radius_mfa.verifiers.held import Held
from radius_mfa.verifiers.push import PushFactor
from radius_mfa.verifiers.sent_codes import Sender, SentCodeFactor

log = structlog.get_logger("radius_mfa.engine")

# Methods no backend here can verify (RFC 1994 CHAP, MS-CHAP v1, EAP).
UNSUPPORTED_METHODS = frozenset({"chap", "mschap", "eap"})


class Engine:
    def __init__(self, *, store, primary: PrimaryBackend, verifiers: Sequence[CodeVerifier],
                 policy: PolicyConfig, sessions: Sessions, clock: Callable[[], float],
                 senders: Mapping[str, Sender] | None = None,
                 delivery: Mapping[str, DeliveryFactorConfig] | None = None,
                 push=None, number_matching: bool = True, app_passwords=None, enrol_links=None):
        """``delivery``: the configured code channels (``sms``, ``voice``,
        ``email``) and ``senders`` their providers; a channel is offered only
        when it has both. ``push``: the PushHub when factors.push is
        configured (radius_mfa.push.hub). ``app_passwords``: the
        AppPasswordFactor (radius_mfa.verifiers.app_password). ``enrol_links``:
        radius_mfa.enrolment.EnrolLinks where the self-service page is on."""
        self.store = store                      # AsyncStore
        self.primary = primary
        self.verifiers = tuple(verifiers)
        self.policy = policy
        self.sessions = sessions
        self.clock = clock
        self.lockout = Lockout(store, policy.lockout, clock)
        self.decisions = Decisions(primary.name, clock)
        self.app_passwords = app_passwords
        self.enrol_links = enrol_links
        self.codes = SentCodeFactor(store, clock, delivery, senders)
        self.sent_codes = SentCodeFlow(self.codes, sessions, self.decisions, self.lockout, policy.delimiter)
        self.push = PushFlow(PushFactor(push, store, clock, number_matching) if push is not None else None,
                             sessions, self.decisions, self.lockout, clock)
        # the factors picked by a word, and answering a challenge: one method per stage
        flows: tuple[PickedFlow, ...] = (self.push, self.sent_codes)
        self.picked = {word: flow for flow in flows for word in flow.words}
        self.answering = {Stage.UPSTREAM: self._answer_upstream, Stage.CODE: self._answer_code,
                          **{flow.stage: flow.answer for flow in flows}}
        self.exempt_users = frozenset(canonical(u, policy.username) for u in policy.exempt_users)
        self.exempt_groups = frozenset(g.lower() for g in policy.exempt_groups)

    # --- entry point ----------------------------------------------------------
    async def handle(self, req: AuthRequest) -> Decision:
        reject = self.decisions.reject
        if req.received is None:
            req = dataclasses.replace(req, received=self.clock())
        if req.name_invalid:
            # RFC 2865 names are octets: answered (not dropped, so a proxy in
            # front keeps us alive), and no different from an unknown user
            await self.primary.equalize(req.password or b"")
            return reject(req, Reason.UNKNOWN_USER)
        if req.method in UNSUPPORTED_METHODS:
            return reject(req, Reason.UNSUPPORTED_METHOD)
        name = canonical(req.user_name or "", self.policy.username)
        if not name:
            return reject(req, Reason.BAD_REQUEST)
        req = dataclasses.replace(req, user_name=name, sent_name=req.sent_name or req.user_name)
        if req.state is not None and req.client.mode is not Mode.SECOND_FACTOR_ONLY:
            return await self._answer_challenge(req)
        if req.client.mode is Mode.SECOND_FACTOR_ONLY:
            return await self._second_factor_only(req, await self.store.get_user(req.user_name))
        if (req.password is None and not req.mschap) or (req.mschap and not self.primary.supports_mschap):
            reason = Reason.BAD_REQUEST if not req.mschap else Reason.UNSUPPORTED_METHOD
            return reject(req, reason, user=await self.store.get_user(req.user_name))
        return await self._first_round(req)

    # --- stages ---------------------------------------------------------------
    async def _first_round(self, req: AuthRequest) -> Decision:
        if req.mschap:
            password, answer, secret = None, None, b""
        else:
            text = decode_password(req.password)
            password, answer = split_inline(text, self.policy.delimiter, req.client.mode)
            secret = password.encode("utf-8", "surrogateescape")

        # the password is an answer too: its attempt is taken and counted
        # before it is checked, in the store step that reads the user
        sign_in = await self.lockout.begin(req.user_name)
        user, attempt = sign_in.user, sign_in.attempt
        refusal = self._refusal(user)
        if refusal is None and user is not None and attempt is None:
            refusal = Reason.LOCKED                 # a lock set since the user was read
        if refusal is not None:
            await self.primary.equalize(secret)
            return self.decisions.reject(req, refusal, user=user)
        if attempt is not None and not req.mschap:
            decided = await self._app_password(req, user, text, attempt)
            if decided is not None:
                return decided

        result = await self.primary.authenticate(self._primary_request(
            req, user, None if req.mschap else secret))
        return await self._after_primary(req, user, result, answer, attempt, sign_in.tokens)

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
        return self.decisions.of(req, user, result, (), {})

    async def _after_primary(self, req: AuthRequest, user: User | None, result: PrimaryResult,
                             answer: str | None, attempt: Attempt | None = None,
                             tokens: Sequence[Token] | None = None) -> Decision:
        """The password was checked (or the upstream asks for more): the
        second factor. ``tokens``: the user's, when read with the user."""
        info = dict(result.user_info)
        if result.reason is Reason.OVERLOADED:
            # queued longer than the client waits: no answer, the NAS has given up
            await self.lockout.settle(user, attempt, Reason.OVERLOADED)
            return Decision(Verdict.FAIL, req.user_name, self.primary.name,
                            reason=Reason.OVERLOADED, user=user)
        # a right password followed in the same request by a typed code
        # (inline): its attempt stays taken and counts for the code, instead
        # of being given back and taken again (two store writes fewer, and
        # no moment in between when the user has one more attempt)
        carried = attempt if (result.ok and user is not None and answer is not None
                              and classify(answer) not in FACTOR_WORDS) else None
        if carried is None:
            # a right password (or an upstream that could not decide) gives
            # its attempt back; a wrong one stays counted
            await self.lockout.settle(user, attempt, None if result.ok or result.challenge is not None
                                      else result.reason, accepted=False)
        if result.challenge is not None:
            return await self._relay_challenge(req, user, result)
        if not result.ok:
            return self.decisions.reject(req, result.reason, user=user, info=info)
        attributes = result.attributes
        user = await refresh_from_directory(self.store, user, info)
        info = pinned(user, info)
        if self._exempt(req, user, info):
            if carried is not None:
                await self.lockout.settle(user, carried, None, accepted=True)
            elif user is not None:
                await self.lockout.clear(user)
            return self.decisions.accept(req, user, factor="none", attributes=attributes, info=info)
        if user is None:
            # a backend that knows users the store does not (LDAP, upstream
            # RADIUS): nothing is enrolled here for them
            return await self._unenrolled(req, None, attributes, info)

        held = await self._held(user, tokens)
        decision = await self._second_factor(req, user, held, answer, attributes, info, carried)
        return dataclasses.replace(decision, considered=held.names(self.verifiers))

    async def _second_factor(self, req: AuthRequest, user: User, held: Held, answer: str | None,
                             attributes, info: dict, carried: Attempt | None = None) -> Decision:
        """What the user holds decides: the method, the answer, the one factor
        or a menu. ``carried``: the attempt the password took, kept for a
        typed ``answer`` (settled here or by ``_check_answer``)."""
        factors = held.factors(self.verifiers)
        if not factors or not any(req.method in f.methods for f in factors):
            await self.lockout.settle(user, carried, None)      # no code to check: given back
            if not factors:
                return await self._unenrolled(req, user, attributes, info)
            # none of the user's factors works over this method (a token over
            # MS-CHAPv2): refused, whatever `unenrolled` says, so that the
            # choice of method skips no factor
            return self.decisions.reject(req, Reason.NO_FACTOR, user=user, info=info)
        if req.mschap:
            # nothing typed comes back over MS-CHAPv2: the factor that works
            # over it is out of band (the device approves, with the context)
            return await self.push.wait(req, user, attributes, info)
        if answer is not None:
            return await self._check_answer(req, user, held.tokens, answer, attributes, info, carried)
        if not held.tokens and not held.channels:
            # the one factor is the device: push at once, with the number
            # at the prompt where the client can show one
            return await self.push.start(req, user, attributes, info)
        if not held.tokens and not held.devices and len(held.channels) == 1:
            # the one factor is a sent code: no menu, send it now
            return await self.sent_codes.send(req, user, held.channels[0], attributes, info)
        if req.client.mode is Mode.INLINE:
            return self.decisions.reject(req, Reason.NO_ANSWER, user=user, info=info)
        return await self._challenge(req, user, held, attributes, info)

    async def _relay_challenge(self, req: AuthRequest, user: User | None,
                               result: PrimaryResult) -> Decision:
        """The upstream answered with an Access-Challenge (a new PIN, the next
        code): our own State stands for the upstream's, the prompt is its."""
        upstream = result.challenge
        data = {"stage": Stage.UPSTREAM.value,
                "upstream_state": upstream.state.hex() if upstream.state is not None else None}
        state = await self.sessions.open(req.user_name, req.client.name, ("upstream",), data)
        return self.decisions.challenge(req, user, state, upstream.reply_message or "",
                                        info=dict(result.user_info))

    async def _answer_challenge(self, req: AuthRequest) -> Decision:
        # the State taken, the user and their tokens read: one store step
        challenge, why_not, read = await self.sessions.take_with_user(req.state, req.user_name,
                                                                     req.client.name)
        user = read.user
        if challenge is None:
            if why_not is Reason.BAD_STATE and user is not None and self._refusal(user) is None:
                joined = await self.push.join_used_state(req, user)
                if joined is not None:
                    return joined
            return self.decisions.reject(req, why_not, user=user)
        answer = decode_password(req.password) if req.password is not None else ""
        stage = Stage.of(challenge.data)
        if stage is not Stage.UPSTREAM:
            refusal = Reason.UNKNOWN_USER if user is None else self._refusal(user)
            if refusal is not None:
                return self.decisions.reject(req, refusal, user=user)
        attributes = unpack_attributes(challenge.data.get("attributes", []))
        info = challenge.data.get("info", {})
        if stage is Stage.CODE:
            return await self._answer_code(req, user, challenge.data, answer, attributes, info, read.tokens)
        return await self.answering[stage](req, user, challenge.data, answer, attributes, info)

    async def _answer_upstream(self, req: AuthRequest, user: User | None, data: dict, answer: str,
                               attributes, info: dict) -> Decision:
        """The upstream's own challenge (a new PIN): its answer goes back to it."""
        refusal, attempt = await self._admit(user)
        if refusal is not None:
            return self.decisions.reject(req, refusal, user=user)
        upstream_state = data.get("upstream_state")
        result = await self.primary.authenticate(self._primary_request(
            req, user, answer.encode("utf-8", "surrogateescape"),
            bytes.fromhex(upstream_state) if upstream_state else None))
        return await self._after_primary(req, user, result, None, attempt)

    async def _answer_code(self, req: AuthRequest, user: User, data: dict, answer: str,
                           attributes, info: dict, tokens: Sequence[Token] | None = None) -> Decision:
        """The menu or code prompt: a code, or a word that picks a factor.
        ``tokens``: the user's, when read with the challenge."""
        usable = self._usable(tokens) if tokens is not None else await self._usable_tokens(user)
        return await self._check_answer(req, user, usable, answer, attributes, info)

    async def _second_factor_only(self, req: AuthRequest, user: User | None) -> Decision:
        """NPS has checked the password; only the second factor runs here."""
        if user is None:
            return self.decisions.reject(req, Reason.UNKNOWN_USER)
        refusal = self._refusal(user)
        if refusal is not None:
            return self.decisions.reject(req, refusal, user=user)
        if self._exempt(req, user, {}):
            return self.decisions.accept(req, user, factor="none")
        held = await self._held(user)
        answer = decode_password(req.password) if req.password else None
        if (held.tokens or held.channels) and answer is not None and classify(answer) == "code":
            return await self._check_answer(req, user, held.tokens, answer, (), {})
        if held.devices:
            # RD Gateway behind NPS: the request waits for the device
            return await self.push.wait(req, user, (), {})
        if not held.tokens and not held.channels:
            return await self._unenrolled(req, user, (), {})
        # the out-of-band factors (push, voice) that this mode waits for are
        # not configured: nothing can complete the sign-in
        return self.decisions.reject(req, Reason.NO_FACTOR, user=user)

    # --- the second factor ------------------------------------------------------
    async def _check_answer(self, req: AuthRequest, user: User, tokens: Sequence[Token],
                            answer: str, attributes, info: dict,
                            carried: Attempt | None = None) -> Decision:
        kind = classify(answer)
        if kind not in FACTOR_WORDS:
            # a typed answer: an attempt is taken and counted before it is
            # checked, so a burst of guesses gets no further than the lockout
            # (inline, the password's attempt, still taken, is this one)
            attempt = carried if carried is not None else await self.lockout.take(user)
            if attempt is None:
                return self.decisions.reject(req, Reason.LOCKED, user=user,
                                             factor=self._code_factor(tokens), info=info)
            decision, settled = await self._check_typed(req, user, tokens, answer, attributes, info, attempt)
            if not settled:
                await self.lockout.settle(user, attempt, decision.reason,
                                          accepted=decision.verdict is Verdict.ACCEPT)
            return decision
        await self.lockout.settle(user, carried, None)           # a word is no guess: given back
        flow = self.picked[kind]
        if await flow.offers(req, user, kind):
            return await flow.begin(req, user, kind, attributes, info)
        # not configured, or no number, address or device for it
        return self.decisions.reject(req, Reason.NO_FACTOR, user=user, factor=kind, info=info)

    async def _check_typed(self, req: AuthRequest, user: User, tokens: Sequence[Token],
                           answer: str, attributes, info: dict,
                           attempt: Attempt) -> tuple[Decision, bool]:
        """A typed answer, its attempt taken: a sent code, else the tokens.
        With the decision, whether the verifier settled the attempt already."""
        if is_digits(answer) and self.codes.configured:
            # a sent code may be shorter or longer than a token's (code_digits);
            # without a code channel configured there is none to look up
            sent = await self.codes.check(user, answer.strip())
            if sent is not None:
                return self.decisions.of(req, user, sent, attributes, info), False
        if classify(answer) == "code":
            code = answer.strip()
            for verifier in self.verifiers:
                mine = [t for t in tokens if verifier.handles(t)]
                if not mine:
                    continue
                result = await verifier.verify(user, mine, code, self.clock(), attempt=attempt)
                if result is not None:
                    return self.decisions.of(req, user, result, attributes, info), result.settled
        return self.decisions.reject(req, Reason.BAD_CODE, user=user, factor=self._code_factor(tokens),
                                     info=info), False

    async def _challenge(self, req: AuthRequest, user: User, held: Held, attributes,
                         info: dict) -> Decision:
        """The menu (or the one code prompt): the user's tokens, channels and device."""
        factors = tuple(sorted({t.type for t in held.tokens})) + held.channels + ("push",) * bool(held.devices)
        state = await self.sessions.open(user.name, req.client.name, factors,
                                         challenge_data(attributes, info))
        prompt = menu_for(held.tokens, held.channels, user, push=bool(held.devices))
        return self.decisions.challenge(req, user, state, prompt, factor=self._code_factor(held.tokens),
                                        info=info)

    async def _unenrolled(self, req: AuthRequest, user: User | None, attributes,
                          info: dict) -> Decision:
        """A right password and no usable factor: ``policy.unenrolled``."""
        if self.policy.unenrolled == "allow":
            if user is not None:
                await self.lockout.clear(user)
            return self.decisions.accept(req, user, factor="none", attributes=attributes, info=info)
        if self.policy.unenrolled == "enrol" and self.enrol_links is not None \
                and req.client.mode is not Mode.SECOND_FACTOR_ONLY:
            # the second exception to identical rejects: it follows a right
            # password checked here; a directory user gets a record to enrol into
            user = user or await record_directory_user(self.store, req.user_name, info, self.clock())
            url, _ = await self.enrol_links.create(user.name)
            log.info("user.enrol_link", user=user.name, client=req.client.name)
            return self.decisions.reject(req, Reason.ENROL, user=user, info=info,
                                         reply_message=enrol_instruction(url))
        return self.decisions.reject(req, Reason.NO_FACTOR, user=user, info=info)

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

    async def _held(self, user: User, tokens: Sequence[Token] | None = None) -> Held:
        usable = self._usable(tokens) if tokens is not None else await self._usable_tokens(user)
        return Held(usable, self.codes.channels(user), await self.push.devices(user))

    async def _usable_tokens(self, user: User) -> list[Token]:
        return self._usable(await self.store.list_tokens(user.name))

    def _usable(self, tokens: Sequence[Token]) -> list[Token]:
        return [t for t in tokens if any(v.handles(t) for v in self.verifiers)]

    @staticmethod
    def _code_factor(tokens: Sequence[Token]) -> str | None:
        types = sorted({t.type for t in tokens})
        return types[0] if len(types) == 1 else None
