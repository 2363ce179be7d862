from __future__ import annotations

import pytest

from chaos.polling import wait_until
from citypost.errors import FailedPreconditionError, InfrastructureError, InvalidArgumentError

pytestmark = pytest.mark.timeout(10)


def test_returns_the_first_truthy_answer_after_transient_errors() -> None:
    answers: list[object] = [FailedPreconditionError("not yet"), OSError("refused"), None, "up"]

    def check() -> str | None:
        got = answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return got  # type: ignore[return-value]

    assert wait_until("the post", check, 5.0) == "up"
    assert answers == []


def test_times_out_naming_what_and_the_last_error() -> None:
    def check() -> None:
        raise OSError("connection refused")

    with pytest.raises(InfrastructureError, match=r"the broker: not within 0.3 s.*refused"):
        wait_until("the broker", check, 0.3)


def test_an_unexpected_error_is_not_swallowed() -> None:
    def check() -> None:
        raise InvalidArgumentError("a bug, not a system on its way")

    with pytest.raises(InvalidArgumentError):
        wait_until("anything", check, 5.0)
