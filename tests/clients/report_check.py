"""`scoreland report` seen by a browser: headless Chromium renders report.html to a PNG; the page
is not blank, every chart has data, and the HTML loads nothing from the network (no script, no
URL, and a Content-Security-Policy of default-src 'none'). Run by scripts/test.sh:

    python report_check.py SCORELAND_BIN WAREHOUSE WORK_DIR"""
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

from checks import check, summary

BIN, WAREHOUSE, WORK = sys.argv[1:4]


out = os.path.join(WORK, "report.html")
subprocess.run([BIN, "-q", "report", "--warehouse", WAREHOUSE, "--out", out, "--nights", "30"], check=True)
html = open(out, encoding="utf-8").read()
check("readable by others, to be published", oct(os.stat(out).st_mode & 0o777), oct(0o644))
check("no script", "<script" in html.lower(), False)
check("no URL to load", re.findall(r"(?:src|href)\s*=|url\(|https?://", html, re.I), [])
check("a CSP that forbids loading", "default-src 'none'" in html, True)
points = [int(n) for n in re.findall(r'data-points="(\d+)"', html)]
check("charts per model (7 each, 2 models)", len(points), 14)
check("every chart has data", [n for n in points if n == 0], [])
check("no chart without data", html.count('class="chart none"'), 0)
checked = re.findall(r'<tr class="(pass|warn|fail|overridden|skipped)"><td>demo</td>', html)
check("the demo's newest checks are shown, none failed", (len(checked) >= 8, "fail" in checked), (True, False))
check("every chart names the night", all("2026-11-16" in t for t in re.findall(r"<title>([^<]*)</title><text", html)), True)

png = os.path.join(WORK, "report.png")
with tempfile.TemporaryDirectory() as profile:
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
                        "--window-size=1280,1600", f"--screenshot={png}", "file://" + os.path.abspath(out)],
                       capture_output=True, text=True, timeout=120)
check("chromium rendered a PNG", os.path.exists(png) and os.path.getsize(png) > 0, True)


def pixels(path):
    """Decoded RGB(A) rows of a non-interlaced 8-bit PNG (what Chromium writes)."""
    data = open(path, "rb").read()
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            bpp = {2: 3, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, prev, rows = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return rows, bpp


rows, bpp = pixels(png)
colors, inked, total = set(), 0, 0
for line in rows[::4]:
    for i in range(0, len(line), bpp * 4):
        px = tuple(line[i:i + 3])
        colors.add(px)
        total += 1
        inked += px != (255, 255, 255)
check("the page is not blank (several colours, over 3 % inked)", (len(colors) > 8, inked / total > 0.03), (True, True))
# The chart colour is there: bars and lines drawn.
check("charts drawn in the chart colour", any(abs(r - 0x3b) < 12 and abs(g - 0x6f) < 12 and abs(b - 0xd8) < 12 for r, g, b in colors), True)

sys.exit(summary("report"))
