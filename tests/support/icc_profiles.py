"""Small ICC profiles built here (no profile files ship with the test machines), for colour-management tests:

- `adobe_rgb()`: an RGB matrix/TRC profile with Adobe RGB (1998) primaries and gamma 2.2 (cameras' other setting).
- `press_cmyk()`: a CMYK printer profile (a lut8 A2B0 table to Lab) whose inks are real process inks, not the
  pure cyan/magenta/yellow that a profile-less CMYK->RGB conversion assumes.

Both follow the ICC v2 layout (header, tag table, tags); LittleCMS (Pillow's ImageCms) reads them.
"""

from __future__ import annotations

import itertools
import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
# linear sRGB -> XYZ, adapted to D50 (the ICC connection space's white)
SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169],
                            [0.0139322, 0.0971045, 0.7141733]])


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(8) + bytes(3) + bytes(67)


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, blobs = [], b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, offset + len(blobs), len(data)))
        blobs += data
    size = 128 + table_size + len(blobs)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + device_class + space + pcs
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"APPL" + bytes(4) + bytes(4) + bytes(4)
              + bytes(8) + struct.pack(">I", 1) + _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2]) + b"test"
              + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + blobs


def adobe_rgb() -> bytes:
    columns = [(0.6097559, 0.3111242, 0.0194811), (0.2052401, 0.6256560, 0.0608902),
               (0.1492240, 0.0632197, 0.7448387)]  # Adobe RGB (1998) primaries, adapted to D50
    return _profile(b"mntr", b"RGB ", b"XYZ ", [
        (b"desc", _desc("Adobe RGB (1998)-like test profile")), (b"wtpt", _xyz(*D50)),
        (b"rXYZ", _xyz(*columns[0])), (b"gXYZ", _xyz(*columns[1])), (b"bXYZ", _xyz(*columns[2])),
        (b"rTRC", _curve(2.2)), (b"gTRC", _curve(2.2)), (b"bTRC", _curve(2.2))])


# Process inks as sRGB colours (coated paper): far from the pure (0, 255, 255) cyan of a profile-less conversion.
_INKS = np.array([[0, 158, 224], [230, 0, 126], [255, 237, 0]]) / 255.0
_GRID = 5


def _cmyk_to_lab(c: float, m: float, y: float, k: float) -> tuple[float, float, float]:
    linear_inks = np.where(_INKS <= 0.04045, _INKS / 12.92, ((_INKS + 0.055) / 1.055) ** 2.4)
    reflectance = np.ones(3) * 0.9  # paper white
    for amount, ink in zip((c, m, y), linear_inks, strict=True):
        reflectance *= 1 - amount * (1 - ink)
    reflectance *= 1 - 0.92 * k
    x, yy, z = SRGB_TO_XYZ_D50 @ reflectance

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / D50[0]), f(yy / D50[1]), f(z / D50[2])
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def press_cmyk() -> bytes:
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = bytes(range(256))
    clut = bytearray()
    steps = [i / (_GRID - 1) for i in range(_GRID)]
    for c, m, y, k in itertools.product(steps, repeat=4):  # the first channel varies slowest
        lab = _cmyk_to_lab(c, m, y, k)
        clut += bytes([round(min(max(lab[0], 0), 100) * 255 / 100),
                       round(min(max(lab[1] + 128, 0), 255)), round(min(max(lab[2] + 128, 0), 255))])
    lut = (b"mft1" + bytes(4) + bytes([4, 3, _GRID, 0]) + identity + ramp * 4 + bytes(clut) + ramp * 3)
    return _profile(b"prtr", b"CMYK", b"Lab ", [
        (b"desc", _desc("Process-ink CMYK test profile")), (b"wtpt", _xyz(*D50)), (b"A2B0", lut)])
