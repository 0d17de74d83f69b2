"""VNC Authentication's DES answer, checked against vncdotool's independent implementation (cryptography's DES)."""

from __future__ import annotations

import warnings

import pytest

from kvmpy.display import vnc_auth

vnc_rfb = pytest.importorskip("vncdotool.rfb")


@pytest.mark.parametrize("password", ["s3cret", "", "longer than eight", "12345678"])
def test_response_matches_another_client(password: str) -> None:
    challenge = bytes(range(16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = vnc_rfb.des_encrypt(vnc_rfb._vnc_des(password), challenge)
    assert vnc_auth.response(password, challenge) == theirs


def test_only_the_right_answer_passes() -> None:
    challenge = vnc_auth.new_challenge()
    good = vnc_auth.response("pw", challenge)
    assert vnc_auth.check("pw", challenge, good)
    assert not vnc_auth.check("pw2", challenge, good)
    assert not vnc_auth.check(None, challenge, vnc_auth.response("", challenge))


def test_key_bytes_are_bit_reversed() -> None:
    assert vnc_auth.vnc_key("\x01\x80") == b"\x80\x01" + b"\0" * 6
