"""FreeRADIUS 3.2 as a RADIUS over TLS client: the front proxy of
tests/peers/freeradius.py (UDP in from radclient), whose home server is a
radius-mfa reached over TLS (``proto = tcp`` and a ``tls`` block), with a
client certificate. Its own configuration directory; stopped by pid.
"""

from __future__ import annotations

from pathlib import Path

from peers.freeradius import FrontProxy

# What the README shows, minus the paths and ports the test fills in.
TLS_PROXY_CONF = """\
proxy server {
\tdefault_fallback = no
}
home_server radius-mfa {
\ttype = auth
\tipaddr = %(home_host)s
\tport = %(home_port)d
\tproto = tcp
\tsecret = radsec
\tresponse_window = 20
\tstatus_check = none
\ttls {
\t\tca_file = %(ca_file)s
\t\tcertificate_file = %(cert_file)s
\t\tprivate_key_file = %(key_file)s
\t\tcheck_cert_cn = %(server_name)s
\t\tfragment_size = 8192
\t\ttls_min_version = "1.2"
\t}
}
home_server_pool radius-mfa {
\ttype = fail-over
\thome_server = radius-mfa
}
realm home {
\tauth_pool = radius-mfa
\tnostrip
}
"""


class TlsFrontProxy(FrontProxy):
    """FreeRADIUS proxying every Access-Request from 127.0.0.1 (``secret``) to
    radius-mfa at ``home`` over TLS, presenting ``cert_file``/``key_file``
    and checking the server's certificate against ``ca_file`` and ``server_name``."""

    def __init__(self, directory: Path, home: tuple[str, int], *, ca_file: Path, cert_file: Path,
                 key_file: Path, server_name: str, secret: str = "testing123"):
        self.tls_files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file,
                          "server_name": server_name}
        super().__init__(directory, home, "radsec", secret=secret)

    def _write_config(self) -> None:
        super()._write_config()
        (self.directory / "proxy.conf").write_text(TLS_PROXY_CONF % {
            "home_host": self.home[0], "home_port": self.home[1], **self.tls_files})
