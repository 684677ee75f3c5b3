"""The self-service page end to end: a real `radius-mfa serve`, real headless
Chromium (Debian's chromium and chromium-driver, driven by Selenium; nothing
is downloaded), real radclient.

An administrator makes an enrolment link; the user opens it, enrols an
authenticator app (reading the key from the page, as a person typing it
would), confirms a code, and signs in over RADIUS with that token; creates an
app password and signs in with it; deletes all app passwords and is refused;
signs out and signs in to the page again with password and code. A PNG
screenshot of each page is kept in tests/artifacts/portal/ (the README links
them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyotp
import pytest

from e2e import RADCLIENT, Server, needs_radclient, radclient
from peers.process import free_tcp_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts" / "portal"
PASSWORD = "Tr0ub4dor&3-portal"

selenium = pytest.importorskip("selenium", reason="selenium is in the test extra (pip install -e .[test])")
needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"),
    reason="chromium and chromium-driver (Debian) are not installed; .ci/run installs them")


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--ignore-certificate-errors", "--window-size=1000,1300",
                     f"--user-data-dir={tmp_path / 'chromium'}", "--no-first-run",
                     "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Steps:
    """TOTP codes never used before: each a later time step than the last."""

    def __init__(self, secret: str):
        self.totp = pyotp.TOTP(secret)
        self.last = -1

    def fresh(self) -> str:
        while True:
            now = int(time.time() // 30)
            for step in (now, now + 1):             # window 1: the next step is accepted too
                if step > self.last:
                    self.last = step
                    return self.totp.generate_otp(step)
            time.sleep(max(0.2, (now + 1) * 30 - time.time() + 0.2))


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1000, max(700, min(int(height) + 140, 2400)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def press(driver, by: str, value: str) -> None:
    """Click a button and wait for the page it leads to."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    button = driver.find_element(by, value)
    button.click()
    WebDriverWait(driver, 15).until(expected_conditions.staleness_of(button))
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def sign_in_over_radius(server: Server, password: str) -> str | None:
    reply = radclient(server.port, [("User-Name", "alice"), ("User-Password", password),
                                    ("Message-Authenticator", "0x00")])
    return reply.code


@needs_radclient
@needs_chromium
def test_enrol_in_a_browser_then_sign_in_over_radius(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By

    web = free_tcp_port()
    server = Server(tmp_path, extra=f"""
portal:
  listen: "127.0.0.1:{web}"
  tls_cert: portal.crt
  tls_key: portal.key
  public_url: "https://127.0.0.1:{web}"
""")
    server.cli("user", "add", "alice", "--display-name", "Alice Example", "--password-stdin",
               input=PASSWORD + "\n")
    server.start()
    try:
        link = json.loads(server.cli("user", "enrol-link", "alice", "--json").stdout)
        assert link["url"].startswith(f"https://127.0.0.1:{web}/enrol/")

        # the link: a button, so that a mail scanner fetching it uses nothing up
        browser.get(link["url"])
        shot(browser, "1-enrolment-link")
        press(browser, By.ID, "continue")
        assert "Sign out alice" in browser.page_source
        shot(browser, "2-home-new-user")

        # an authenticator app: the key read from the page, confirmed by a code
        press(browser, By.ID, "add-app")
        secret = browser.find_element(By.ID, "secret").text
        assert all(len(group) == 4 for group in secret.split()[:-1])
        assert browser.find_element(By.ID, "qr").get_attribute("src").startswith("data:image/png;base64,")
        shot(browser, "3-authenticator-app")
        if shutil.which("zbarimg"):                 # the QR code on the screen carries the same key
            import subprocess

            decoded = subprocess.run(["zbarimg", "-q", "--raw", str(ARTIFACTS / "3-authenticator-app.png")],
                                     capture_output=True, text=True, timeout=30).stdout
            assert decoded.startswith("otpauth://totp/") and f"secret={secret.replace(' ', '')}" in decoded
        steps = Steps(secret.replace(" ", ""))
        browser.find_element(By.ID, "code").send_keys(steps.fresh())
        press(browser, By.ID, "confirm")
        assert "Your authenticator app is set up" in browser.page_source
        shot(browser, "4-authenticator-app-added")

        # the token signs in over RADIUS: password,CODE inline
        assert sign_in_over_radius(server, f"{PASSWORD},{steps.fresh()}") == "Access-Accept"

        # an app password, shown once, stands in for password and code
        browser.find_element(By.ID, "label").send_keys("mail on the laptop")
        press(browser, By.ID, "create-app-password")
        app_password = browser.find_element(By.ID, "app-password").text
        shot(browser, "5-app-password")
        assert sign_in_over_radius(server, app_password) == "Access-Accept"
        press(browser, By.ID, "back")
        assert app_password not in browser.page_source

        # delete them all: refused at once
        press(browser, By.ID, "delete-all")
        assert "All your app passwords are deleted" in browser.page_source
        assert browser.find_elements(By.ID, "no-app-passwords")
        assert sign_in_over_radius(server, app_password) == "Access-Reject"
        shot(browser, "6-app-passwords-deleted")

        # sign out, then in again with the password and a code
        press(browser, By.CSS_SELECTOR, "form[action='/sign-out'] button")
        assert "You are signed out" in browser.page_source
        browser.find_element(By.ID, "user").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "code").send_keys(steps.fresh())
        shot(browser, "7-sign-in")
        press(browser, By.CSS_SELECTOR, "form[action='/sign-in'] button")
        assert "Sign out alice" in browser.page_source

        # the last sign-ins: the three RADIUS requests, newest first
        rows = browser.find_elements(By.CSS_SELECTOR, "#sign-ins tr")[1:]
        assert len(rows) == 3
        assert "reject" in rows[0].text and "accept" in rows[1].text and "app_password" in rows[1].text
        shot(browser, "8-home-with-sign-ins")

        # nothing secret in the server's log
        log = server.log()
        for secret_text in (PASSWORD, secret.replace(" ", ""), app_password, link["url"].rsplit("/", 1)[1]):
            assert secret_text not in log
    finally:
        server.stop()


class Http:
    """A plain HTTPS client with a cookie jar (the page's own certificate is self-signed)."""

    def __init__(self, port: int):
        import ssl

        self.port = port
        self.context = ssl._create_unverified_context()
        self.cookies: dict[str, str] = {}

    def go(self, method: str, path: str, form: dict | None = None) -> tuple[int, str]:
        import http.client
        from urllib.parse import urlencode

        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=20)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        for line in response.headers.get_all("Set-Cookie") or []:
            key, _, rest = line.partition("=")
            value = rest.split(";")[0]
            if value:
                self.cookies[key] = value
            else:
                self.cookies.pop(key, None)
        text = response.read().decode()
        conn.close()
        return response.status, text


def test_page_beside_the_device_api_pairs_a_phone(tmp_path: Path) -> None:
    """portal.listen equal to factors.push.listen: one HTTPS server serves both,
    and a device paired from the page (the reference authenticator) is the user's."""
    import html as htmlmod
    import re
    import subprocess
    import sys

    web = free_tcp_port()
    server = Server(tmp_path, factors=f"""  push:
    listen: "127.0.0.1:{web}"
    tls_cert: "{tmp_path}/push.crt"
    tls_key: "{tmp_path}/push.key"
    public_url: "https://127.0.0.1:{web}"
""", extra=f"""
portal:
  listen: "127.0.0.1:{web}"
  public_url: "https://127.0.0.1:{web}"
""")
    server.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    server.start()
    try:
        client = Http(web)
        status, openapi = client.go("GET", "/v1/openapi.yaml")
        assert status == 200 and "openapi" in openapi
        url = json.loads(server.cli("user", "enrol-link", "alice", "--json").stdout)["url"]
        status, page = client.go("GET", url.split(str(web), 1)[1])
        assert status == 200
        csrf = re.search(r'name=csrf value="([^"]+)"', page).group(1)
        token = re.search(r'name=token value="([^"]+)"', page).group(1)
        assert client.go("POST", "/enrol", {"csrf": csrf, "token": token})[0] == 303
        status, home = client.go("GET", "/")
        csrf = re.search(r'name=csrf value="([^"]+)"', home).group(1)
        status, paired = client.go("POST", "/device/pair", {"csrf": csrf})
        assert status == 200
        link = htmlmod.unescape(re.search(r"id=pairing-url>([^<]+)<", paired).group(1))
        script = shutil.which("radius-mfa-authenticator")
        command = [script] if script else [sys.executable, "-m", "radius_mfa_authenticator"]
        phone = subprocess.run([*command, "--state", str(tmp_path / "phone"), "pair", link],
                               capture_output=True, text=True, timeout=60)
        assert phone.returncode == 0, phone.stderr
        assert "alice" in server.cli("device", "list", "alice").stdout
        status, home = client.go("GET", "/")
        assert "Last seen" in home and "None yet." not in home.split("Push devices")[1].split("<h2>")[0]

        # then the page's own sign-in with the password and "push": the
        # request waits while the phone approves
        import threading

        fresh = Http(web)
        status, page = fresh.go("GET", "/")
        csrf = re.search(r'name=csrf value="([^"]+)"', page).group(1)
        answer: list = []
        waiting = threading.Thread(target=lambda: answer.append(fresh.go(
            "POST", "/sign-in", {"csrf": csrf, "user": "alice", "password": PASSWORD, "code": "push"})))
        waiting.start()
        pending = subprocess.run([*command, "--state", str(tmp_path / "phone"), "wait", "--timeout", "20"],
                                 capture_output=True, text=True, timeout=60)
        assert pending.returncode == 0, pending.stderr
        approved = subprocess.run([*command, "--state", str(tmp_path / "phone"), "approve",
                                   json.loads(pending.stdout)["id"]], capture_output=True, text=True, timeout=60)
        assert approved.returncode == 0, approved.stderr
        waiting.join(30)
        assert answer and answer[0][0] == 303
        assert "Sign out alice" in fresh.go("GET", "/")[1]
    finally:
        server.stop()
