"""screendump's image formats: PPM as QEMU writes it (P6, maxval 255, RGB rows) and a PNG any decoder reads back."""

from __future__ import annotations

import io

import pytest

from kvmpy.display.screendump import to_png, to_ppm
from kvmpy.display.surface import Rect
from tests.display.framebuffer import MemoryFramebuffer

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def fb() -> MemoryFramebuffer:
    fb = MemoryFramebuffer(37, 11, stride=37 * 4 + 12)  # a stride with padding, as adapters have
    fb.pattern()
    fb.fill(Rect(3, 2, 5, 4), (255, 128, 1))
    return fb


def test_ppm_is_qemus_p6(fb) -> None:
    data = to_ppm(fb.refresh().frame)
    header = b"P6\n37 11\n255\n"  # QEMU's ppm_save: "P6\n%d %d\n%d\n" with maxval 255
    assert data[: len(header)] == header
    assert data[len(header):] == fb.rgb_image()
    assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == fb.rgb_image()


def test_png_decodes_to_the_frame(fb) -> None:
    img = Image.open(io.BytesIO(to_png(fb.refresh().frame)))
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (37, 11))
    assert img.tobytes() == fb.rgb_image()
