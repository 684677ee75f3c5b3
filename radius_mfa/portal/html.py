"""The pages of the self-service page: pure functions from values to HTML.

Every value that reaches a page goes through :func:`esc`; the only markup
that is not escaped is built here. One inline stylesheet, whose SHA-256 the
Content-Security-Policy names, so no other style and no script can run.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import datetime, timezone
from typing import Iterable, Sequence

STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1f24}
main{max-width:42rem;margin:2rem auto;background:#fff;padding:1.5rem 2rem;border-radius:8px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{font-size:1.4rem;margin-top:0}h2{font-size:1.1rem;margin-top:1.8rem;border-top:1px solid #ddd;padding-top:1rem}
label{display:block;margin:.6rem 0 .2rem}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.45rem;font-size:1rem;
border:1px solid #999;border-radius:4px}
button{margin-top:.8rem;padding:.45rem 1rem;font-size:1rem;border-radius:4px;border:1px solid #245;
background:#2a5db0;color:#fff;cursor:pointer}
button.danger{background:#b3261e;border-color:#7a1a15}button.plain{background:#fff;color:#245}
.error{background:#fde8e7;border:1px solid #b3261e;padding:.6rem;border-radius:4px}
.notice{background:#e7f5ea;border:1px solid #2e7d32;padding:.6rem;border-radius:4px}
code.secret{font-size:1.2rem;letter-spacing:.05em;word-spacing:.4em;background:#f0f0f0;padding:.3rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{text-align:left;padding:.25rem .4rem;
border-bottom:1px solid #eee}
.qr{display:block;margin:1rem 0;image-rendering:pixelated}
header{display:flex;justify-content:space-between;align-items:center}
header form button{margin:0}
"""

#: For the Content-Security-Policy: the one stylesheet allowed.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()

CSP = ("default-src 'none'; style-src '" + STYLE_HASH + "'; img-src data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def page(title: str, body: str, *, error: str | None = None, notice: str | None = None,
         signed_in: tuple[str, str] | None = None) -> bytes:
    """A whole page. ``signed_in``: (user name, CSRF token) for the header's
    sign-out button."""
    header = f"<h1>{esc(title)}</h1>"
    if signed_in is not None:
        user, csrf = signed_in
        header = (f"<header><h1>{esc(title)}</h1><form method=post action=/sign-out>{csrf_field(csrf)}"
                  f"<button class=plain type=submit>Sign out {esc(user)}</button></form></header>")
    messages = ""
    if error:
        messages += f'<p class=error role=alert>{esc(error)}</p>'
    if notice:
        messages += f'<p class=notice role=status>{esc(notice)}</p>'
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=referrer content=no-referrer>'
        f"<title>{esc(title)} · radius-mfa</title><style>{STYLE}</style></head>"
        f"<body><main>{header}{messages}{body}</main></body></html>"
    ).encode("utf-8")


def csrf_field(token: str) -> str:
    return f'<input type=hidden name=csrf value="{esc(token)}">'


def sign_in(csrf: str, name: str = "") -> str:
    return (
        "<p>Sign in with your password and a code from your authenticator app or token. "
        "No app or token? Type <b>sms</b>, <b>voice</b> or <b>email</b> as the code to get one sent, "
        "or <b>push</b> to approve on your paired device. "
        "New here? Open the enrolment link your administrator sent you.</p>"
        f"<form method=post action=/sign-in>{csrf_field(csrf)}"
        f'<label for=user>User name</label><input type=text id=user name=user value="{esc(name)}" '
        "autocomplete=username autocapitalize=none required>"
        "<label for=password>Password</label><input type=password id=password name=password "
        "autocomplete=current-password required>"
        "<label for=code>Code (or push, sms, voice, email)</label><input type=text id=code name=code "
        "autocomplete=one-time-code autocapitalize=none pattern='[0-9]{4,10}|push|sms|voice|email' required>"
        "<button type=submit>Sign in</button></form>"
    )


def enrol_link(csrf: str, token: str) -> str:
    return (
        "<p>This one-time link signs you in to set up your sign-in factors. "
        "It works once, for 15 minutes.</p>"
        f"<form method=post action=/enrol>{csrf_field(csrf)}"
        f'<input type=hidden name=token value="{esc(token)}">'
        "<button type=submit id=continue>Continue</button></form>"
    )


def home(csrf: str, *, tokens: Sequence, devices: Sequence, app_passwords: Sequence,
         sign_ins: Iterable[dict], push: bool) -> str:
    parts = ["<h2>Authenticator apps and tokens</h2>"]
    if tokens:
        parts.append("<table><tr><th>Serial</th><th>Type</th><th>Added</th></tr>" + "".join(
            f"<tr><td>{esc(t.serial)}</td><td>{esc(t.type.upper())}</td><td>{when(t.created)}</td></tr>"
            for t in tokens) + "</table>")
    else:
        parts.append("<p>None yet.</p>")
    parts.append(f"<form method=post action=/totp/start>{csrf_field(csrf)}"
                 "<button type=submit id=add-app>Add an authenticator app</button></form>")
    if push:
        parts.append("<h2>Push devices</h2>")
        if devices:
            parts.append("<table><tr><th>Device</th><th>Paired</th><th>Last seen</th></tr>" + "".join(
                f"<tr><td>{esc(d.name)}</td><td>{when(d.created)}</td><td>{when(d.last_seen)}</td></tr>"
                for d in devices) + "</table>")
        else:
            parts.append("<p>None yet.</p>")
        parts.append(f"<form method=post action=/device/pair>{csrf_field(csrf)}"
                     "<button type=submit id=pair>Pair a push device</button></form>")
    parts.append("<h2>App passwords</h2><p>For a program or device that cannot ask for a code "
                 "(a mail client, say): type the app password alone, in place of password and code.</p>")
    if app_passwords:
        parts.append("<table id=app-passwords><tr><th>Id</th><th>Label</th><th>Created</th><th>Last used</th></tr>"
                     + "".join(f"<tr><td>{esc(a.id)}</td><td>{esc(a.label or '')}</td><td>{when(a.created)}</td>"
                               f"<td>{when(a.last_used)}</td></tr>" for a in app_passwords) + "</table>")
    else:
        parts.append("<p id=no-app-passwords>None.</p>")
    parts.append(f"<form method=post action=/app-passwords>{csrf_field(csrf)}"
                 "<label for=label>Label (what it is for)</label>"
                 "<input type=text id=label name=label maxlength=64>"
                 "<button type=submit id=create-app-password>Create an app password</button></form>")
    if app_passwords:
        parts.append(f"<form method=post action=/app-passwords/delete-all>{csrf_field(csrf)}"
                     "<button class=danger type=submit id=delete-all>Delete all app passwords</button></form>")
    parts.append("<h2>Your last sign-ins</h2>")
    rows = list(sign_ins)
    if rows:
        parts.append("<table id=sign-ins><tr><th>Time</th><th>Where</th><th>From</th><th>How</th>"
                     "<th>Result</th></tr>" + "".join(
                         f"<tr><td>{esc(r.get('time'))}</td><td>{esc(r.get('client'))}</td>"
                         f"<td>{esc(r.get('user_ip') or '')}</td><td>{esc(r.get('factor') or '')}</td>"
                         f"<td>{esc(r.get('result'))}{' (' + esc(r.get('reason')) + ')' if r.get('reason') else ''}"
                         "</td></tr>" for r in rows) + "</table>")
    else:
        parts.append("<p>None recorded yet.</p>")
    return "".join(parts)


def group_secret(secret: str) -> str:
    """``JBSW Y3DP EHPK 3PXP``: easier to read out and type."""
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def totp_enrol(csrf: str, secret: str, qr_data_uri: str) -> str:
    return (
        "<p>Scan this code with your authenticator app (or type the key below into it), "
        "then enter the code the app shows to confirm. The app counts only once you confirm.</p>"
        f'<img class=qr id=qr alt="QR code of the authenticator key" src="{esc(qr_data_uri)}">'
        f"<p>Key: <code class=secret id=secret>{esc(group_secret(secret))}</code></p>"
        f"<form method=post action=/totp/confirm>{csrf_field(csrf)}"
        "<label for=code>Code from the app</label><input type=text id=code name=code inputmode=numeric "
        "autocomplete=one-time-code required>"
        "<button type=submit id=confirm>Confirm</button></form>"
        '<p><a href="/">Back without adding it</a></p>'
    )


def pairing(url: str, expires: str, qr_data_uri: str) -> str:
    return (
        "<p>Scan this code with the authenticator app on the device to pair it "
        f"(or open the link there). It works once, until {esc(expires)}.</p>"
        f'<img class=qr alt="QR code of the pairing link" src="{esc(qr_data_uri)}">'
        f"<p><code id=pairing-url>{esc(url)}</code></p>"
        '<p><a href="/">Done</a></p>'
    )


def app_password(record_id: str, label: str | None, password: str) -> str:
    return (
        "<p>Your new app password, shown this once: copy it into the program now. "
        "It stands in for your password and code together.</p>"
        f"<p><code class=secret id=app-password>{esc(password)}</code></p>"
        f"<p>Id {esc(record_id)}{' · ' + esc(label) if label else ''}</p>"
        '<p><a href="/" id=back>Done</a></p>'
    )


def back_link() -> str:
    return '<p><a href="/">Go to the start page</a></p>'
