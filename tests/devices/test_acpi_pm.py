"""ACPI PM1 block, PM timer and reset register, driven through a real port-I/O bus."""

from kvmpy.devices.acpi_pm import AcpiPm, ResetControl
from kvmpy.devices.bus import Bus


class Line:
    def __init__(self):
        self.levels = []

    def set_level(self, level):
        self.levels.append(level)


def _bus(clock):
    events = []
    sci = Line()
    pm = AcpiPm(on_poweroff=lambda: events.append("off"), sci=sci, s5_type=0, clock_ns=clock)
    bus = Bus("pio")
    bus.map(0x600, 12, pm, "pm")
    bus.map(0xCF9, 1, ResetControl(on_reset=lambda: events.append("reset")), "rst")
    return bus, pm, events, sci


def test_s5_powers_off_and_other_states_do_not():
    now = [0]
    bus, pm, events, _ = _bus(lambda: now[0])
    assert bus.read(0x604, 2) & 1  # SCI_EN: always in ACPI mode
    bus.write(0x604, 2, (5 << 10) | (1 << 13))  # S3-ish type: not implemented, no power-off
    assert events == []
    bus.write(0x604, 2, (0 << 10) | (1 << 13) | 1)
    assert events == ["off"]
    assert not bus.read(0x604, 2) & (1 << 13)  # SLP_EN reads back as 0
    # Byte-wise access, as ACPICA may do: the high byte carries SLP_EN.
    bus.write(0x605, 1, 1 << 5)
    assert events == ["off", "off"]


def test_pm_timer_counts_at_3_58_mhz_and_wraps_at_24_bits():
    now = [0]
    bus, pm, _, _ = _bus(lambda: now[0])
    now[0] = 1_000_000_000
    assert bus.read(0x608, 4) == 3_579_545
    now[0] = 10_000_000_000
    assert bus.read(0x608, 4) == 35_795_450 & 0xFFFFFF
    assert bus.read(0x600, 2) & 1  # TMR_STS: bit 23 flipped
    bus.write(0x600, 2, 1)  # write 1 to clear
    assert not bus.read(0x600, 2) & 1


def test_sci_follows_status_and_enable():
    now = [0]
    bus, pm, _, sci = _bus(lambda: now[0])
    bus.write(0x602, 2, 1)  # TMR_EN
    now[0] = 3_000_000_000  # past one bit-23 flip
    bus.read(0x600, 2)
    assert sci.levels[-1] is True
    bus.write(0x600, 2, 1)
    assert sci.levels[-1] is False


def test_reset_register_and_migration():
    now = [0]
    bus, pm, events, _ = _bus(lambda: now[0])
    bus.write(0xCF9, 1, 0x02)
    assert events == [] and bus.read(0xCF9, 1) == 0x02
    bus.write(0xCF9, 1, 0x06)
    assert events == ["reset"]
    bus.write(0x602, 2, 0x0101)
    now[0] = 2_000_000_000
    state = pm.save()
    other = AcpiPm(on_poweroff=lambda: None, clock_ns=lambda: 5)
    other.restore(state)
    assert other.en == 0x0101 and other._ticks() == state["ticks"]
