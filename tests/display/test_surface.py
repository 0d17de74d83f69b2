"""Frame's row view: pixels without the stride padding."""

from kvmpy.display.surface import BYTES_PER_PIXEL, Frame


def test_a_row_leaves_out_the_stride_padding() -> None:
    width, height, stride = 3, 2, 16
    pixels = bytes(range(stride)) + bytes(range(100, 100 + stride))
    frame = Frame(width, height, stride, pixels)
    assert frame.row(0) == bytes(range(width * BYTES_PER_PIXEL))
    assert frame.row(1) == bytes(range(100, 100 + width * BYTES_PER_PIXEL))
