"""The self-service page's protections, each named for the attack it closes.

The Portal resource runs in process over a real SQLite store (its calls run
in place: ``immediate_runner``) with a clock the test moves; the primary
backend is a stand-in that knows one password. The whole page in a real
browser against a real server is tests/test_e2e_portal.py.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path
from urllib.parse import urlencode

import pyotp
import pytest
from twisted.internet.address import IPv4Address
from twisted.web.http_headers import Headers

from radius_mfa.config import load_config
from radius_mfa.enrolment import create_now
from radius_mfa.model import Token, User
from radius_mfa.portal import app as portal_app
from radius_mfa.portal.app import ABSOLUTE_SECONDS, IDLE_SECONDS, Portal
from radius_mfa.primary.base import PrimaryResult
from radius_mfa.store import open_store
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason

PASSWORD = "correct horse"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
START = 1_700_000_000.0


class OnePassword:
    """A primary backend that knows alice's one password."""
    name = "local"
    supports_mschap = False

    def __init__(self):
        self.checked = 0

    async def authenticate(self, request):
        self.checked += 1
        if request.password == PASSWORD.encode():
            return PrimaryResult(True)
        return PrimaryResult(False, Reason.BAD_PASSWORD)

    async def equalize(self, password: bytes) -> None:
        return None


class Request:
    """Just enough of twisted.web's Request for the resource."""

    def __init__(self, method: str, path: str, form: dict | None = None, cookies: dict | None = None):
        self.method = method.encode()
        self.uri = path.encode()
        self.path = path.split("?")[0].encode()
        self.content = BytesIO(urlencode(form or {}).encode())
        self.requestHeaders = Headers()
        if cookies:
            self.requestHeaders.addRawHeader(b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode())
        self.responseHeaders = Headers()
        self.code = 200
        self.body = b""
        self.finished = False
        self._disconnected = False

    def getClientAddress(self):
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True

    @property
    def text(self) -> str:
        return self.body.decode()

    def set_cookies(self) -> list[str]:
        return [c.decode() for c in self.responseHeaders.getRawHeaders(b"set-cookie") or []]

    def cookie(self, name: str) -> str | None:
        for line in self.set_cookies():
            key, _, rest = line.partition("=")
            if key == name:
                return rest.split(";")[0]
        return None


class Browser:
    """A cookie jar and the portal."""

    def __init__(self, portal: Portal):
        self.portal = portal
        self.cookies: dict[str, str] = {}

    def go(self, method: str, path: str, form: dict | None = None) -> Request:
        request = Request(method, path, form, self.cookies)
        self.portal.render(request)
        assert request.finished
        for line in request.set_cookies():
            key, _, rest = line.partition("=")
            value = rest.split(";")[0]
            if value:
                self.cookies[key] = value
            else:
                self.cookies.pop(key, None)
        return request


def csrf_of(page: Request) -> str:
    return re.search(r'name=csrf value="([^"]+)"', page.text).group(1)


@pytest.fixture
def world(tmp_path: Path):
    config_path = tmp_path / "radius-mfa.yaml"
    config_path.write_text(f"""
store: "sqlite:///{tmp_path}/store.db"
clients:
  - {{name: vpn, address: 127.0.0.1, secret: "0123456789abcdef0123"}}
policy:
  lockout: {{failures: 3, minutes: 15}}
portal:
  listen: "127.0.0.1:0"
  public_url: "https://mfa.example.org:8444"
""")
    config = load_config(config_path)
    sync = open_store(config.store, config.store_key_file)
    sync.add_user(User("alice", created=START))
    clock = [START]
    store = AsyncStore(sync, immediate_runner)
    primary = OnePassword()
    portal = Portal(store, config, lambda: primary, lambda: clock[0], immediate_runner)

    class World:
        pass
    w = World()
    w.sync, w.clock, w.portal, w.primary, w.config = sync, clock, portal, primary, config
    yield w
    sync.close()


def link(world) -> str:
    url, _ = create_now(world.sync, lambda: world.clock[0], world.config.portal.public_url, "alice")
    return url.split("8444", 1)[1]


def signed_in(world) -> tuple[Browser, str]:
    """A browser signed in through an enrolment link, and its home page's CSRF token."""
    browser = Browser(world.portal)
    page = browser.go("GET", link(world))
    token = re.search(r'name=token value="([^"]+)"', page.text).group(1)
    done = browser.go("POST", "/enrol", {"csrf": csrf_of(page), "token": token})
    assert done.code == 303
    home = browser.go("GET", "/")
    assert home.code == 200 and "Sign out alice" in home.text
    return browser, csrf_of(home)


def test_session_cookie_is_secure_httponly_samesite_strict_and_host_bound(world) -> None:
    browser = Browser(world.portal)
    page = browser.go("GET", link(world))
    token = re.search(r'name=token value="([^"]+)"', page.text).group(1)
    done = browser.go("POST", "/enrol", {"csrf": csrf_of(page), "token": token})
    cookies = [c for c in done.set_cookies() if c.startswith(portal_app.SESSION_COOKIE + "=")]
    assert len(cookies) == 1
    flags = [part.strip() for part in cookies[0].split(";")[1:]]
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
    assert portal_app.SESSION_COOKIE.startswith("__Host-") and not any(f.startswith("Domain") for f in flags)
    for cookie in page.set_cookies():
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_pages_forbid_framing_scripts_and_third_party_resources(world) -> None:
    page = Browser(world.portal).go("GET", "/")
    csp = page.responseHeaders.getRawHeaders(b"content-security-policy")[0].decode()
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert page.responseHeaders.getRawHeaders(b"x-frame-options") == [b"DENY"]
    assert page.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    assert not re.search(r"(src|href)=\"?https?:", page.text)


def test_enrolment_link_used_twice_is_refused(world) -> None:
    path = link(world)
    first = Browser(world.portal)
    page = first.go("GET", path)
    token = re.search(r'name=token value="([^"]+)"', page.text).group(1)
    assert first.go("POST", "/enrol", {"csrf": csrf_of(page), "token": token}).code == 303
    second = Browser(world.portal)
    page = second.go("GET", path)
    again = second.go("POST", "/enrol", {"csrf": csrf_of(page), "token": token})
    assert again.code == 403 and "used already" in again.text
    assert portal_app.SESSION_COOKIE not in second.cookies


def test_fetching_an_enrolment_link_does_not_use_it_up(world) -> None:
    """A mail scanner that follows the link leaves it working."""
    path = link(world)
    Browser(world.portal).go("GET", path)
    browser = Browser(world.portal)
    page = browser.go("GET", path)
    token = re.search(r'name=token value="([^"]+)"', page.text).group(1)
    assert browser.go("POST", "/enrol", {"csrf": csrf_of(page), "token": token}).code == 303


def test_expired_enrolment_link_is_refused(world) -> None:
    browser = Browser(world.portal)
    page = browser.go("GET", link(world))
    token = re.search(r'name=token value="([^"]+)"', page.text).group(1)
    world.clock[0] += 15 * 60
    assert browser.go("POST", "/enrol", {"csrf": csrf_of(page), "token": token}).code == 403


def test_cross_site_form_without_csrf_token_is_refused(world) -> None:
    browser, csrf = signed_in(world)
    for form in ({}, {"csrf": "x" * 43}, {"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}):
        refused = browser.go("POST", "/app-passwords", {**form, "label": "evil"})
        assert refused.code == 403 and "did not come from this page" in refused.text
    assert world.sync.list_app_passwords("alice") == []
    assert browser.go("POST", "/app-passwords", {"csrf": csrf, "label": "mail"}).code == 200
    assert len(world.sync.list_app_passwords("alice")) == 1


def test_login_csrf_without_form_cookie_is_refused(world) -> None:
    """Signing a victim in to the attacker's account needs the form cookie."""
    page = Browser(world.portal).go("GET", "/")
    stranger = Browser(world.portal)
    refused = stranger.go("POST", "/sign-in", {"csrf": csrf_of(page), "user": "alice",
                                               "password": PASSWORD, "code": "123456"})
    assert refused.code == 403 and world.primary.checked == 0


def test_idle_session_is_refused(world) -> None:
    browser, csrf = signed_in(world)
    world.clock[0] += IDLE_SECONDS + 1
    refused = browser.go("POST", "/app-passwords", {"csrf": csrf, "label": "late"})
    assert refused.code == 401 and "session has ended" in refused.text
    assert world.sync.list_app_passwords("alice") == []
    assert "Sign out" not in browser.go("GET", "/").text


def test_session_past_its_absolute_lifetime_is_refused_even_when_busy(world) -> None:
    browser, csrf = signed_in(world)
    for _ in range(int(ABSOLUTE_SECONDS // (IDLE_SECONDS - 60)) + 1):
        world.clock[0] += IDLE_SECONDS - 60
        browser.go("GET", "/")
    assert browser.go("POST", "/app-passwords", {"csrf": csrf}).code == 401


def test_signed_out_session_cookie_no_longer_works(world) -> None:
    browser, csrf = signed_in(world)
    stolen = dict(browser.cookies)
    assert browser.go("POST", "/sign-out", {"csrf": csrf}).code == 200
    thief = Browser(world.portal)
    thief.cookies = stolen
    assert thief.go("POST", "/app-passwords", {"csrf": csrf}).code == 401


def sign_in(world, password: str, code: str) -> Request:
    browser = Browser(world.portal)
    page = browser.go("GET", "/")
    return browser.go("POST", "/sign-in", {"csrf": csrf_of(page), "user": "Alice", "password": password,
                                           "code": code})


def with_token(world) -> pyotp.TOTP:
    world.sync.add_token(Token(serial="T1", type="totp", secret=SECRET, user="alice", created=START))
    return pyotp.TOTP(SECRET)


def test_sign_in_with_password_and_code(world) -> None:
    totp = with_token(world)
    done = sign_in(world, PASSWORD, totp.at(world.clock[0]))
    assert done.code == 303 and done.cookie(portal_app.SESSION_COOKIE)
    assert world.sync.get_user("alice").failures == 0


def test_password_guessing_through_the_page_counts_towards_the_lockout(world) -> None:
    totp = with_token(world)
    for _ in range(3):
        assert sign_in(world, "guess", totp.at(world.clock[0])).code == 403
    assert world.sync.get_user("alice").locked_until is not None
    checked = world.primary.checked
    refused = sign_in(world, PASSWORD, totp.at(world.clock[0]))
    assert refused.code == 403 and world.primary.checked == checked    # locked: not even checked


def test_code_guessing_through_the_page_counts_towards_the_lockout(world) -> None:
    with_token(world)
    assert sign_in(world, PASSWORD, "000000").code == 403
    assert world.sync.get_user("alice").failures == 1
    sign_in(world, PASSWORD, "111111")
    sign_in(world, PASSWORD, "222222")
    assert world.sync.get_user("alice").locked_until is not None


def test_refusals_look_the_same_whatever_was_wrong(world) -> None:
    totp = with_token(world)
    pages = [sign_in(world, "guess", totp.at(world.clock[0])), sign_in(world, PASSWORD, "000000")]
    nobody = Browser(world.portal)
    page = nobody.go("GET", "/")
    pages.append(nobody.go("POST", "/sign-in", {"csrf": csrf_of(page), "user": "mallory",
                                                "password": "x", "code": "123456"}))
    errors = {re.search(r"class=error[^>]*>([^<]+)", p.text).group(1) for p in pages}
    assert len(errors) == 1 and {p.code for p in pages} == {403}


def test_replayed_code_does_not_sign_in(world) -> None:
    totp = with_token(world)
    code = totp.at(world.clock[0])
    assert sign_in(world, PASSWORD, code).code == 303
    assert sign_in(world, PASSWORD, code).code == 403


def test_authenticator_app_counts_only_after_a_confirmed_code(world) -> None:
    browser, csrf = signed_in(world)
    assert browser.go("POST", "/totp/start", {"csrf": csrf}).code == 303
    page = browser.go("GET", "/totp")
    secret = re.search(r"id=secret>([^<]+)<", page.text).group(1).replace(" ", "")
    assert re.search(r"src=\"data:image/png;base64,", page.text)
    assert world.sync.list_tokens("alice") == []
    wrong = browser.go("POST", "/totp/confirm", {"csrf": csrf, "code": "000000"})
    assert wrong.code == 400 and "not the one the app shows" in wrong.text
    assert world.sync.list_tokens("alice") == []
    code = pyotp.TOTP(secret).at(world.clock[0])
    done = browser.go("POST", "/totp/confirm", {"csrf": csrf, "code": code})
    assert done.code == 303
    [token] = world.sync.list_tokens("alice")
    assert token.secret == secret
    # the confirming code is used up: it cannot sign in over RADIUS or here
    assert sign_in(world, PASSWORD, code).code == 403


def test_app_password_is_shown_once_and_delete_all_removes_them(world) -> None:
    browser, csrf = signed_in(world)
    made = browser.go("POST", "/app-passwords", {"csrf": csrf, "label": "mail"})
    password = re.search(r"id=app-password>([^<]+)<", made.text).group(1)
    [record] = world.sync.list_app_passwords("alice")
    assert password not in record.password_hash and password not in browser.go("GET", "/").text
    assert browser.go("POST", "/app-passwords/delete-all", {"csrf": csrf}).code == 303
    assert world.sync.list_app_passwords("alice") == []


def test_errors_are_sentences_never_tracebacks(world) -> None:
    browser, csrf = signed_in(world)
    world.sync.close()                  # the store goes away under the page
    page = browser.go("POST", "/app-passwords", {"csrf": csrf})
    assert page.code == 503 and "Traceback" not in page.text and "store" in page.text
    assert Browser(world.portal).go("GET", "/nowhere").code == 404


def test_enrol_policy_without_a_portal_is_a_config_error(tmp_path: Path) -> None:
    from radius_mfa.errors import ConfigError

    path = tmp_path / "radius-mfa.yaml"
    path.write_text("policy:\n  unenrolled: enrol\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert f"{path}:2: policy.unenrolled: enrol needs a portal section" in str(refused.value)


def test_enrol_link_command_exit_codes(world, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    def run(*args: str, config: Path = Path(world.config.path)) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "radius_mfa", "-c", str(config), "user", "enrol-link", *args],
                              capture_output=True, text=True, timeout=60)

    made = run("ALICE", "--json")
    assert made.returncode == 0, made.stderr
    answer = json.loads(made.stdout)
    assert set(answer) == {"url", "expires"}
    assert answer["url"].startswith("https://mfa.example.org:8444/enrol/")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", answer["expires"])
    unknown = run("nobody")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr and "Traceback" not in unknown.stderr
    plain = tmp_path / "no-portal.yaml"
    plain.write_text(Path(world.config.path).read_text().split("portal:")[0])
    missing = run("alice", config=plain)
    assert missing.returncode == 2 and "portal" in missing.stderr


def test_a_failing_link_page_never_logs_the_link(world, monkeypatch) -> None:
    from structlog.testing import capture_logs

    path = link(world)
    monkeypatch.setattr(portal_app.html, "enrol_link", lambda *args: 1 / 0)
    with capture_logs() as logs:
        page = Browser(world.portal).go("GET", path)
    assert page.code == 500 and "Traceback" not in page.text and "went wrong" in page.text
    assert logs and path.rsplit("/", 1)[1] not in repr(logs)


def test_reloaded_lockout_policy_reaches_the_page(world) -> None:
    import dataclasses

    from radius_mfa.config import LockoutConfig

    totp = with_token(world)
    policy = dataclasses.replace(world.config.policy, lockout=LockoutConfig(failures=1, minutes=15))
    world.portal.reconfigure(dataclasses.replace(world.config, policy=policy))
    assert sign_in(world, "guess", totp.at(world.clock[0])).code == 403
    assert world.sync.get_user("alice").locked_until is not None


# --- signing in with a sent code or a push, through the RADIUS engine ------------------

class CapturingSender:
    """The sms channel's providers: keeps what would have gone out."""

    def __init__(self):
        self.sent = []

    async def send(self, message, deadline: float) -> str:
        self.sent.append(message)
        return "gateway"


@pytest.fixture
def sms_world(world):
    from radius_mfa.config import DeliveryFactorConfig
    from radius_mfa.engine import Engine
    from radius_mfa.sessions import Sessions

    world.sync.update_user("alice", phone="+4915112345678")
    store = AsyncStore(world.sync, immediate_runner)
    clock = lambda: world.clock[0]   # noqa: E731
    world.sender = CapturingSender()
    engine = Engine(store=store, primary=world.primary, verifiers=[], policy=world.config.policy,
                    sessions=Sessions(store, clock, ttl=300.0), clock=clock,
                    senders={"sms": world.sender}, delivery={"sms": DeliveryFactorConfig()})
    world.portal = Portal(store, world.config, lambda: world.primary, clock, immediate_runner,
                          engine=lambda: engine)
    return world


def sign_in_form(browser: Browser, code: str, password: str = PASSWORD) -> Request:
    page = browser.go("GET", "/")
    return browser.go("POST", "/sign-in", {"csrf": csrf_of(page), "user": "alice", "password": password,
                                           "code": code})


def test_a_user_without_a_token_signs_in_with_a_code_sent_by_sms(sms_world) -> None:
    browser = Browser(sms_world.portal)
    asked = sign_in_form(browser, "sms")
    assert asked.code == 200 and "A code is on its way" in asked.text
    assert len(sms_world.sender.sent) == 1
    code = sms_world.sender.sent[0].code
    done = sign_in_form(browser, code)
    assert done.code == 303
    assert "Sign out alice" in browser.go("GET", "/").text
    # the code is used up: it opens no second session
    assert sign_in_form(Browser(sms_world.portal), code).code == 403


def test_asking_for_a_code_with_a_wrong_password_sends_nothing(sms_world) -> None:
    refused = sign_in_form(Browser(sms_world.portal), "sms", password="guess")
    assert refused.code == 403 and portal_app.SIGN_IN_FAILED in refused.text
    assert sms_world.sender.sent == []


def test_push_for_a_user_without_a_paired_device_is_refused_like_any_failure(sms_world) -> None:
    refused = sign_in_form(Browser(sms_world.portal), "push")
    assert refused.code == 403 and portal_app.SIGN_IN_FAILED in refused.text
