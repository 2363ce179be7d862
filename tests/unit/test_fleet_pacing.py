"""How fast the simulated city may run: its uplinks must fit under the network server's cap."""

from __future__ import annotations

import pytest

from citypost.errors import ConfigError
from fleet.pacing import fitting_speed

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_a_default_speed_is_lowered_to_what_the_cap_allows_and_an_asked_one_refused() -> None:
    # The full city: 80.2 uplinks per simulated second; the network server's cap 3,000/s.
    assert fitting_speed(60, 80.2, 3000, explicit=False) == 33  # 3000 * 0.9 / 80.2 = 33.7
    assert fitting_speed(20, 80.2, 3000, explicit=True) == 20  # fits: as asked
    with pytest.raises(ConfigError, match=r"speed of 33 or less"):
        fitting_speed(600, 80.2, 3000, explicit=True)
    assert fitting_speed(60, 0.0, 3000, explicit=True) == 60  # a city that says nothing
    assert fitting_speed(60, 5000, 3000, explicit=False) == 0.54  # slower than real time
