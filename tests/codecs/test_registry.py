"""`register`: what a codec must declare, and the description it reads from the docstring."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

from reality_stone.codecs import base, codec_class
from reality_stone.codecs.base import CodecConfig, register
from reality_stone.codecs.lowrank import LowRankEncoded

NAME = "test-registry-codec"


@pytest.fixture(autouse=True)
def _unregister():
    yield
    base._REGISTRY.pop(NAME, None)


def test_description_and_use_when_come_from_the_docstring():
    @register(NAME, LowRankEncoded)
    @dataclass(frozen=True)
    class Documented(CodecConfig):
        """A one-line
        description.

        Use when: never, it is a
        test.

        field: what it means.
        """

        error_bound: ClassVar[float] = 0.5

    assert codec_class(NAME) is Documented
    assert Documented.description == "A one-line description"
    assert Documented.use_when == "never, it is a test."


def test_use_when_is_optional():
    @register(NAME, LowRankEncoded)
    @dataclass(frozen=True)
    class Short(CodecConfig):
        """Only a description."""

        error_bound: ClassVar[float] = 0.5

    assert Short.description == "Only a description" and Short.use_when == ""


def test_a_codec_without_a_docstring_is_refused():
    with pytest.raises(ValueError, match="docstring"):
        @register(NAME, LowRankEncoded)
        @dataclass(frozen=True)  # writes its signature as __doc__: not a description
        class Undocumented(CodecConfig):
            error_bound: ClassVar[float] = 0.5
    assert NAME not in base._REGISTRY


@pytest.mark.parametrize("bound", [0.0, 1.0, 1])
def test_error_bound_must_be_declared_in_0_1(bound):
    with pytest.raises(ValueError, match="error_bound"):
        @register(NAME, LowRankEncoded)
        @dataclass(frozen=True)
        class Unbounded(CodecConfig):
            """Unbounded."""

            error_bound: ClassVar = bound


def test_bad_calibration_mode_and_encoded_type_and_name_clash():
    with pytest.raises(ValueError, match="calibration"):
        @register(NAME, LowRankEncoded)
        @dataclass(frozen=True)
        class Odd(CodecConfig):
            """Odd."""

            calibration: ClassVar[str] = "sometimes"
            error_bound: ClassVar[float] = 0.5
    with pytest.raises(TypeError, match="Encoded subclass"):
        @register(NAME, dict)
        @dataclass(frozen=True)
        class NotEncoded(CodecConfig):
            """Not encoded."""

            error_bound: ClassVar[float] = 0.5
    with pytest.raises(ValueError, match="already registered"):
        @register("rtn", LowRankEncoded)
        @dataclass(frozen=True)
        class Clash(CodecConfig):
            """Clash."""

            error_bound: ClassVar[float] = 0.5
