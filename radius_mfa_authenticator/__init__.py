"""`radius-mfa-authenticator`: the reference push authenticator.

It plays a paired phone from a shell, so push approval can be tried, scripted
and tested without an app: ``pair URL`` registers a new Ed25519 key with the
device API (docs/device-api.yaml, the contract of radius_mfa.push.api);
``pending`` lists the sign-ins waiting for this device's user; ``approve``,
``deny`` and ``fraud`` answer one; ``wait`` blocks until one is pending.

State lives in one directory (``--state DIR``, made mode 0700): the private
key (``device.key``, PEM, mode 0600) and ``device.json`` (the device API's
base URL, the certificate fingerprint it was paired with, the device id and
the user). Pairing again in the same directory replaces both: a new key, a
new device on the server (the old one stays listed until `radius-mfa device
remove`).

Trust: the pairing URL carries the SHA-256 fingerprint of the device API's
certificate. Every connection pins it: the server's leaf certificate is
accepted only when the SHA-256 of its DER form equals the pinned value, and
then no CA or host name check is needed (a self-signed certificate is the
normal case). Any other certificate ends the call with "the server's
certificate does not match the one this device was paired with".

Exit codes: 0 done; 1 refused (the server's ``error`` text, or what went
wrong on the way, as one line on stderr); 2 bad usage. Network trouble
(connection refused, time-outs, a TLS failure) is one clear line, never a
traceback. Nothing secret is printed: not the key, not the pairing token.

The package is a client of radius-mfa's device API, kept apart from the
server: it shares only the pure crypto helpers of radius_mfa.push.crypto
(the signed messages and the pairing link). ``errors`` holds the refusals
and the terminal-safe text, ``state`` the key and pairing on disk,
``client`` the pinned HTTPS calls of the device API, ``cli`` the commands
and the console script.
"""

PROG = "radius-mfa-authenticator"
