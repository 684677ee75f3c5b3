"""The sent-code factor's rounds (SMS, voice, email): send or join the code
of this login attempt and say where it went (a Challenge bound to it, or in
inline mode a Reject with the instruction), then check the answer to that
challenge against that code only."""

from __future__ import annotations

from radius_mfa.challenges import Stage, challenge_data
from radius_mfa.config import Mode
from radius_mfa.lockout import Lockout
from radius_mfa.model import SentCode, User
from radius_mfa.prompts import RATE_LIMITED_MESSAGE, code_sent_instruction, code_sent_prompt, mask_destination
from radius_mfa.requests import (DEADLINE_MARGIN, AuthRequest, Decision, Decisions, decode_password,
                                 is_digits, split_inline)
from radius_mfa.sessions import Sessions
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.sent_codes import SentCodeFactor, destination


class SentCodeFlow:
    stage = Stage.SENT_CODE
    words = SentCodeFactor.words

    def __init__(self, factor: SentCodeFactor, sessions: Sessions, decisions: Decisions,
                 lockout: Lockout, delimiter: str):
        self.factor = factor
        self.sessions = sessions
        self.decisions = decisions
        self.lockout = lockout
        self.delimiter = delimiter

    async def offers(self, req: AuthRequest, user: User, word: str) -> bool:
        """A channel configured, with a number or address on record; never
        in second-factor-only mode, where no second round trip comes."""
        return word in self.factor.channels(user) and req.client.mode is not Mode.SECOND_FACTOR_ONLY

    async def begin(self, req: AuthRequest, user: User, word: str, attributes, info: dict) -> Decision:
        """The user answered ``sms``, ``voice`` or ``email``."""
        return await self.send(req, user, word, attributes, info)

    async def send(self, req: AuthRequest, user: User, channel: str, attributes,
                   info: dict) -> Decision:
        """The user asked for a code (or it is their only factor): join the
        code already on its way for this login attempt, or send one, and say
        where it went."""
        outcome = await self.factor.send(user, channel, client=req.client.name,
                                         calling_station_id=req.calling_station_id,
                                         client_timeout=req.client.timeout,
                                         deadline=max(1.0, req.client.timeout - DEADLINE_MARGIN))
        if outcome.code is None:
            message = RATE_LIMITED_MESSAGE if outcome.reason is Reason.RATE_LIMITED else None
            return self.decisions.reject(req, outcome.reason, user=user, factor=channel, info=info,
                                         reply_message=message)
        return await self._sent(req, user, outcome.code, attributes, info)

    async def answer(self, req: AuthRequest, user: User, data: dict, answer: str,
                     attributes, info: dict) -> Decision:
        """The answer to a challenge that named where a code went: that code only."""
        channel = data.get("channel")
        attempt = await self.lockout.take(user)
        if attempt is None:
            return self.decisions.reject(req, Reason.LOCKED, user=user, factor=channel, info=info)
        code = answer.strip()
        result = await self.factor.check(user, code, data.get("code_id")) if is_digits(code) else None
        decision = (self.decisions.of(req, user, result, attributes, info) if result is not None
                    else self.decisions.reject(req, Reason.BAD_CODE, user=user, factor=channel, info=info))
        await self.lockout.settle(user, attempt, decision.reason,
                                  accepted=decision.verdict is Verdict.ACCEPT)
        return decision

    async def _sent(self, req: AuthRequest, user: User, sent: SentCode, attributes,
                    info: dict) -> Decision:
        """The answer once a code is on its way: inline, a Reject that tells
        the user what to do next; otherwise a Challenge bound to the code."""
        where = mask_destination(sent.channel, destination(user, sent.channel))
        if req.client.mode is Mode.INLINE or req.state is None and self._typed_inline(req):
            return self.decisions.reject(req, Reason.CODE_SENT, user=user, factor=sent.channel,
                                         info=info, provider=sent.provider,
                                         reply_message=code_sent_instruction(where, self.delimiter))
        data = challenge_data(attributes, info)
        data.update({"stage": Stage.SENT_CODE.value, "code_id": sent.id, "channel": sent.channel})
        state = await self.sessions.open(user.name, req.client.name, (sent.channel,), data)
        return self.decisions.challenge(req, user, state, code_sent_prompt(where),
                                        factor=sent.channel, info=info, provider=sent.provider)

    def _typed_inline(self, req: AuthRequest) -> bool:
        """A challenge client that used the inline form (``password,sms``):
        answered inline, since the user typed the whole answer in one go."""
        if req.password is None:
            return False
        _, answer = split_inline(decode_password(req.password), self.delimiter, req.client.mode)
        return answer is not None
