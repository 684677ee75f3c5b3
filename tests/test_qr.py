"""`token add` QR codes scan, on light and on dark terminals, and as files.

The terminal drawing is read back the way a terminal shows it: each cell's
colour is its explicit colour when the output sets one, else the theme's
(foreground for a block, background for a space). Painted both ways (black
on white, and a light-on-black theme) at 8 px per module, with the theme's
background around it as a terminal window has, each image is decoded by
zbar (Debian zbar-tools' zbarimg) and must give back the otpauth:// URI.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from e2e import command
from radius_mfa import qr

ZBARIMG = shutil.which("zbarimg")
needs_zbar = pytest.mark.skipif(ZBARIMG is None and not os.environ.get("CI"),
                                reason="zbarimg (Debian zbar-tools) is not installed; .ci/run installs it")

BLACK, WHITE = (0, 0, 0), (255, 255, 255)
# 256-colour indices the drawing may use, as RGB
PALETTE = {16: BLACK, 231: WHITE}
# (foreground, background) of two terminal themes
THEMES = {"light": (BLACK, WHITE), "dark": ((204, 204, 204), BLACK)}
SGR = re.compile(r"\x1b\[([0-9;]*)m")
PX = 8


def cells(line: str, theme: tuple) -> list[tuple[int, int, int]]:
    """The colour each character cell of ``line`` shows under ``theme``."""
    default_fg, default_bg = theme
    fg = bg = None
    shown = []
    pos = 0
    for match in [*SGR.finditer(line), None]:
        text = line[pos:match.start()] if match else line[pos:]
        for ch in text:
            if ch == "\u2588":
                shown.append(fg or default_fg)
            elif ch == " ":
                shown.append(bg or default_bg)
            else:
                raise AssertionError(f"unexpected character {ch!r} in the drawing")
        if match is None:
            break
        pos = match.end()
        params = [int(p) for p in match.group(1).split(";") if p] or [0]
        i = 0
        while i < len(params):
            if params[i] == 0:
                fg = bg = None
            elif params[i] in (38, 48) and params[i + 1] == 5:
                colour = PALETTE[params[i + 2]]
                fg, bg = (colour, bg) if params[i] == 38 else (fg, colour)
                i += 2
            else:
                raise AssertionError(f"unexpected SGR parameter {params[i]}")
            i += 1
    return shown


def module_grid(drawing: str, theme: tuple) -> list[list[tuple]]:
    """The drawing's lines as module rows: two cells make one module."""
    grid = []
    for line in drawing.splitlines():
        row = cells(line, theme)
        assert len(row) % 2 == 0
        pairs = [row[i:i + 2] for i in range(0, len(row), 2)]
        assert all(a == b for a, b in pairs), "a module's two cells differ"
        grid.append([a for a, _ in pairs])
    assert len({len(r) for r in grid}) == 1 and len(grid) == len(grid[0]), "not square"
    return grid


def png(rows: list[list[tuple]], path: Path) -> None:
    """An RGB PNG of ``rows`` of pixels (stdlib only)."""
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def paint(grid: list[list[tuple]], theme: tuple, path: Path, margin: int = 3) -> None:
    """The grid at PX pixels per module, inside a margin of the theme's
    background, as a terminal window shows it."""
    ground = theme[1]
    size = len(grid) + 2 * margin
    modules = [[ground] * size for _ in range(margin)]
    modules += [[ground] * margin + row + [ground] * margin for row in grid]
    modules += [[ground] * size for _ in range(margin)]
    pixels = [[px for px in row for _ in range(PX)] for row in modules for _ in range(PX)]
    png(pixels, path)


def zbar(path: Path) -> list[str]:
    proc = subprocess.run([ZBARIMG or "zbarimg", "--raw", "-q", str(path)],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.splitlines()


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "radius-mfa.yaml"
    path.write_text(f"""
server:
  name: Example VPN
store: "sqlite:///{tmp_path / 'store.db'}"
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "testing123"
""")
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command() + ["-c", str(config), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def token_add(config: Path, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    assert cli(config, "user", "add", "alice").returncode == 0
    proc = cli(config, "token", "add", "alice", "--type", "totp", *extra)
    assert proc.returncode == 0, proc.stderr
    uri = proc.stdout.split("URI: ", 1)[1].split("\n", 1)[0]
    assert uri.startswith("otpauth://totp/")
    return proc, uri


def drawing_of(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if line.startswith("\x1b["))


@needs_zbar
@pytest.mark.parametrize("theme", sorted(THEMES))
def test_the_terminal_code_scans_on_light_and_dark_themes(config, tmp_path, theme):
    proc, uri = token_add(config)
    grid = module_grid(drawing_of(proc.stdout), THEMES[theme])
    image = tmp_path / f"{theme}.png"
    paint(grid, THEMES[theme], image)
    assert zbar(image) == [uri]


def test_the_terminal_code_has_a_four_module_light_quiet_zone(config):
    proc, _ = token_add(config)
    for theme in THEMES.values():
        grid = module_grid(drawing_of(proc.stdout), theme)
        border = [*grid[:4], *grid[-4:], *(row[:4] + row[-4:] for row in grid)]
        assert all(px == WHITE for row in border for px in row)
        assert grid[4][4] == BLACK                 # the finder pattern's corner


def test_the_half_block_drawing_this_replaces_would_not_read_the_same_on_both_themes():
    # what the test guards against: colours left to the theme invert the code
    line = "\u2588\u2588  "
    assert cells(line, THEMES["light"])[0] != cells(line, THEMES["dark"])[0]
    assert cells(qr.terminal_lines("x")[0], THEMES["light"]) == cells(qr.terminal_lines("x")[0], THEMES["dark"])


@needs_zbar
def test_qr_png_writes_an_image_that_scans_and_only_its_owner_can_read(config, tmp_path):
    image = tmp_path / "alice.png"
    proc, uri = token_add(config, "--qr", "png", str(image))
    assert "\x1b[" not in proc.stdout and f"written to {image}" in proc.stdout
    assert image.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert zbar(image) == [uri]


def test_qr_svg_writes_an_xml_image(config, tmp_path):
    image = tmp_path / "alice.svg"
    proc, uri = token_add(config, "--qr", "svg", str(image))
    root = ET.parse(image).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert stat.S_IMODE(image.stat().st_mode) == 0o600


def test_qr_with_an_unknown_format_is_a_usage_error_and_enrols_nothing(config, tmp_path):
    assert cli(config, "user", "add", "alice").returncode == 0
    proc = cli(config, "token", "add", "alice", "--type", "totp", "--qr", "gif", str(tmp_path / "x.gif"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "svg or png" in proc.stderr
    assert cli(config, "token", "list", "alice", "--json").stdout.strip() == "[]"


def test_qr_to_a_path_that_cannot_be_written_is_refused_and_enrols_nothing(config, tmp_path):
    assert cli(config, "user", "add", "alice").returncode == 0
    proc = cli(config, "token", "add", "alice", "--type", "totp", "--qr", "png",
               str(tmp_path / "missing" / "x.png"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot write" in proc.stderr
    assert cli(config, "token", "list", "alice", "--json").stdout.strip() == "[]"


# -- a terminal too narrow for full blocks: half blocks, still in explicit colours

URI = ("otpauth://totp/Example%20VPN:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
       "&issuer=Example%20VPN&digits=6&period=30&algorithm=SHA1")


def half_cells(line: str, theme: tuple) -> list[tuple[tuple, tuple]]:
    """The (upper, lower) colours each cell of ``line`` shows under ``theme``:
    a half block shows its foreground in one half and its background in the
    other."""
    default_fg, default_bg = theme
    fg = bg = None
    shown = []
    pos = 0
    for match in [*SGR.finditer(line), None]:
        for ch in (line[pos:match.start()] if match else line[pos:]):
            f, b = fg or default_fg, bg or default_bg
            shown.append({"\u2588": (f, f), " ": (b, b), "\u2580": (f, b), "\u2584": (b, f)}[ch])
        if match is None:
            break
        pos = match.end()
        params = [int(p) for p in match.group(1).split(";") if p] or [0]
        i = 0
        while i < len(params):
            if params[i] == 0:
                fg = bg = None
            elif params[i] in (38, 48) and params[i + 1] == 5:
                colour = PALETTE[params[i + 2]]
                fg, bg = (colour, bg) if params[i] == 38 else (fg, colour)
                i += 2
            else:
                raise AssertionError(f"unexpected SGR parameter {params[i]}")
            i += 1
    return shown


def half_grid(drawing: str, theme: tuple) -> list[list[tuple]]:
    """The drawing's lines as module rows: each line holds two rows."""
    grid = []
    for line in drawing.splitlines():
        row = half_cells(line, theme)
        grid += [[upper for upper, _ in row], [lower for _, lower in row]]
    return grid


def paint_rows(grid: list[list[tuple]], theme: tuple, path: Path, margin: int = 3) -> None:
    """Like paint(), for a grid of any shape."""
    ground = theme[1]
    width = max(len(row) for row in grid) + 2 * margin
    modules = [[ground] * width for _ in range(margin)]
    modules += [[ground] * margin + row + [ground] * (width - margin - len(row)) for row in grid]
    modules += [[ground] * width for _ in range(margin)]
    pixels = [[px for px in row for _ in range(PX)] for row in modules for _ in range(PX)]
    png(pixels, path)


def visible_width(line: str) -> int:
    return len(SGR.sub("", line))


def test_a_typical_uri_is_too_wide_for_80_columns_in_full_blocks_but_fits_in_half_blocks():
    assert visible_width(qr.terminal_lines(URI)[0]) > 80
    lines = qr.terminal_lines(URI, columns=80)
    assert max(visible_width(line) for line in lines) <= 80
    assert all(line.endswith(qr.RESET) for line in lines)
    assert qr.terminal_lines(URI, columns=200) == qr.terminal_lines(URI)


@needs_zbar
@pytest.mark.parametrize("theme", sorted(THEMES))
def test_the_half_block_code_scans_on_light_and_dark_themes(tmp_path, theme):
    grid = half_grid("\n".join(qr.terminal_lines(URI, columns=80)), THEMES[theme])
    border = [*grid[:4], *(row[:4] + row[-4:] for row in grid)]
    assert all(px == WHITE for row in border for px in row)
    image = tmp_path / f"{theme}.png"
    paint_rows(grid, THEMES[theme], image)
    assert zbar(image) == [URI]


@needs_zbar
def test_the_drawing_left_to_the_theme_inverts_on_a_light_terminal(tmp_path):
    # the painter is not blind to themes: segno's plain half blocks (the old
    # drawing) scan on a dark theme only
    import io

    out = io.StringIO()
    qr.make(URI).terminal(out=out, compact=True)
    found = {}
    for name, theme in THEMES.items():
        paint_rows(half_grid(out.getvalue(), theme), theme, tmp_path / f"{name}.png")
        found[name] = zbar(tmp_path / f"{name}.png")
    assert found == {"dark": [URI], "light": []}


@needs_zbar
@pytest.mark.parametrize("theme", sorted(THEMES))
def test_an_ascii_only_stream_gets_spaces_on_explicit_colours_that_scan(tmp_path, theme):
    import io

    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    qr.write_terminal_qr(URI, out)
    out.flush()
    drawing = out.buffer.getvalue().decode("ascii")
    assert "\u2588" not in drawing
    image = tmp_path / f"{theme}.png"
    paint(module_grid(drawing, THEMES[theme]), THEMES[theme], image)
    assert zbar(image) == [URI]


@needs_zbar
def test_token_add_in_an_80_column_terminal_draws_a_code_that_fits_and_scans(config, tmp_path):
    import fcntl
    import pty
    import termios

    assert cli(config, "user", "add", "alice").returncode == 0
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 80, 0, 0))
        proc = subprocess.Popen(command() + ["-c", str(config), "token", "add", "alice", "--type", "totp"],
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        os.close(slave)
        slave = None
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:                       # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        proc.stderr.close()
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    output = b"".join(chunks).decode("utf-8").replace("\r\n", "\n")
    uri = output.split("URI: ", 1)[1].split("\n", 1)[0]
    drawing = drawing_of(output)
    assert max(visible_width(line) for line in drawing.splitlines()) <= 80
    for name, theme in THEMES.items():
        paint_rows(half_grid(drawing, theme), theme, tmp_path / f"{name}.png")
        assert zbar(tmp_path / f"{name}.png") == [uri], name


# -- the written images: the SVG read back module by module, device pair --qr

def svg_grid(path: Path) -> list[list[tuple]]:
    """The modules of a segno SVG (one path of horizontal runs, in modules,
    scaled by the group's transform) as rows of colours."""
    root = ET.parse(path).getroot()
    ns = {"svg": "http://www.w3.org/2000/svg"}
    group = root.find("svg:g", ns)
    scale = int(re.fullmatch(r"scale\((\d+)\)", group.get("transform")).group(1))
    size = int(root.get("width")) // scale
    assert int(root.get("height")) == size * scale
    grid = [[WHITE] * size for _ in range(size)]
    [line] = [p for p in group.findall("svg:path", ns) if p.get("stroke")]
    x = y = 0.0
    for op, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?", line.get("d")):
        if op == "M":
            x, y = float(a), float(b)
        elif op == "m":
            x, y = x + float(a), y + float(b)
        else:
            for i in range(int(float(a))):
                grid[int(y)][int(x) + i] = BLACK
            x += float(a)
    return grid


@needs_zbar
def test_qr_svg_holds_the_modules_of_the_code_and_they_scan(config, tmp_path):
    image = tmp_path / "alice.svg"
    _, uri = token_add(config, "--qr", "svg", str(image))
    grid = svg_grid(image)
    assert len(grid) == qr.make(uri).symbol_size(border=qr.QUIET_ZONE)[0]
    paint(grid, THEMES["light"], tmp_path / "svg.png")
    assert zbar(tmp_path / "svg.png") == [uri]


@pytest.fixture
def push_config(tmp_path):
    (tmp_path / "tls").mkdir()
    path = tmp_path / "push.yaml"
    path.write_text(f"""
server:
  name: Example VPN
store: "sqlite:///{tmp_path / 'store.db'}"
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "testing123"
factors:
  push:
    listen: "127.0.0.1:8443"
    tls_cert: {tmp_path / 'tls' / 'push.crt'}
    tls_key: {tmp_path / 'tls' / 'push.key'}
    public_url: "https://mfa.example.org:8443"
""")
    return path


@needs_zbar
def test_device_pair_qr_png_writes_the_one_time_link_as_an_image_that_scans(push_config, tmp_path):
    assert cli(push_config, "user", "add", "alice").returncode == 0
    image = tmp_path / "pair.png"
    proc = cli(push_config, "device", "pair", "alice", "--qr", "png", str(image))
    assert proc.returncode == 0, proc.stderr
    [url] = [line for line in proc.stdout.splitlines() if line.startswith("https://")]
    assert "\x1b[" not in proc.stdout and f"written to {image}" in proc.stdout
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert zbar(image) == [url]


def test_device_pair_qr_to_a_path_that_cannot_be_written_stores_no_pairing(push_config, tmp_path):
    import sqlite3

    assert cli(push_config, "user", "add", "alice").returncode == 0
    proc = cli(push_config, "device", "pair", "alice", "--qr", "png", str(tmp_path / "missing" / "x.png"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    with sqlite3.connect(tmp_path / "store.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        [table] = [t for t in tables if "pairing" in t]
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


@needs_zbar
@pytest.mark.parametrize("theme", sorted(THEMES))
def test_device_pair_draws_a_code_that_scans_on_light_and_dark_themes(push_config, tmp_path, theme):
    assert cli(push_config, "user", "add", "alice").returncode == 0
    proc = cli(push_config, "device", "pair", "alice")
    assert proc.returncode == 0, proc.stderr
    [url] = [line for line in proc.stdout.splitlines() if line.startswith("https://")]
    image = tmp_path / f"{theme}.png"
    paint(module_grid(drawing_of(proc.stdout), THEMES[theme]), THEMES[theme], image)
    assert zbar(image) == [url]
