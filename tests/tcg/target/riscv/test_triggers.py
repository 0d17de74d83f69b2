"""The trigger module's matching: which pcs and accesses its armed triggers stop, as QEMU 7.2."""

from __future__ import annotations

from kvmpy.tcg.target.riscv.triggers import (EXECUTE, LOAD, STORE, TDATA1, TDATA2, TSELECT,
                                             TriggerModule)

T2, T6 = 2 << 60, 6 << 60
U, S, M = 8, 16, 64
VU_VS = (1 << 23) | (1 << 24)
PRV_U, PRV_S, PRV_M = 0, 1, 3


def module(*triggers: tuple[int, int]) -> TriggerModule:
    t = TriggerModule()
    for i, (tdata1, tdata2) in enumerate(triggers):
        t.write(TSELECT, i)
        t.write(TDATA1, tdata1)
        t.write(TDATA2, tdata2)
    return t


def test_nothing_is_armed_after_reset():
    t = TriggerModule()
    assert t.execute_addresses() == frozenset() and t.data_ranges() == []
    assert not t.fires_execute(0, PRV_M) and not t.fires_data(0, 8, LOAD | STORE, PRV_M)


def test_execute_triggers_fire_at_their_exact_pc_in_the_modes_they_name():
    t = module((T2 | EXECUTE | M | U, 0x1000), (T6 | EXECUTE | S, 0x2000))
    assert t.execute_addresses() == {0x1000, 0x2000}
    assert t.fires_execute(0x1000, PRV_M) and t.fires_execute(0x1000, PRV_U)
    assert not t.fires_execute(0x1000, PRV_S) and not t.fires_execute(0x1002, PRV_M)
    assert t.fires_execute(0x2000, PRV_S) and not t.fires_execute(0x2000, PRV_M)


def test_an_armed_trigger_without_a_mode_bit_never_fires():
    t = module((T2 | EXECUTE, 0x1000), (T6 | EXECUTE | VU_VS, 0x2000))     # no H: VU/VS never match
    assert t.execute_addresses() == {0x1000, 0x2000}
    assert not any(t.fires_execute(pc, p) for pc in (0x1000, 0x2000) for p in (PRV_U, PRV_S, PRV_M))


def test_the_watched_length_is_the_raw_size_encoding_and_any_is_8():
    # type 2: sizehi 22:21, sizelo 17:16; 1 -> 1 byte, 2 -> 2, 3 ("4 bytes") -> 3, 5 ("8 bytes") -> 5
    sizes = {0: 8, 1: 1, 2: 2, 3: 3, 5: 5}
    for enc, length in sizes.items():
        field = ((enc >> 2) << 21) | ((enc & 3) << 16)
        assert module((T2 | LOAD | M | field, 0x100)).data_ranges() == [(0x100, length)]
        assert module((T6 | LOAD | M | enc << 16, 0x100)).data_ranges() == [(0x100, length)]


def test_data_triggers_fire_on_any_overlap_with_the_right_access_and_mode():
    t = module((T2 | STORE | M | (3 << 16), 0x100))                         # [0x100, 0x103)
    assert t.fires_data(0x102, 1, STORE, PRV_M) and t.fires_data(0xFE, 4, STORE, PRV_M)
    assert not t.fires_data(0x103, 1, STORE, PRV_M) and not t.fires_data(0xF8, 8, STORE, PRV_M)
    assert not t.fires_data(0x100, 1, LOAD, PRV_M) and t.fires_data(0x100, 1, LOAD | STORE, PRV_M)
    assert not t.fires_data(0x100, 1, STORE, PRV_S)


def test_a_range_that_wraps_the_address_space_never_matches():
    t = module((T2 | LOAD | M, (1 << 64) - 4))
    assert t.data_ranges() == [] and not t.fires_data((1 << 64) - 4, 1, LOAD, PRV_M)
