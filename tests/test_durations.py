"""Tests for bridge.wire.durations (tables mirror Go's time_test.go and Ollama's envconfig
tests)."""

from __future__ import annotations

import logging
import math

import pytest

from bridge.wire.durations import (
    DEFAULT_KEEP_ALIVE,
    _format_ns,
    _parse_ns,
    env_keep_alive,
    format_go_duration,
    parse_go_duration,
    parse_keep_alive,
)

NS, US, MS, S = 1, 1_000, 1_000_000, 1_000_000_000
M, H = 60 * S, 3600 * S

# Go: time_test.go parseDurationTests (exact nanoseconds).
GO_PARSE_OK = [
    ("0", 0),
    ("5s", 5 * S),
    ("30s", 30 * S),
    ("1478s", 1478 * S),
    ("-5s", -5 * S),
    ("+5s", 5 * S),
    ("-0", 0),
    ("+0", 0),
    ("5.0s", 5 * S),
    ("5.6s", 5 * S + 600 * MS),
    ("5.s", 5 * S),
    (".5s", 500 * MS),
    ("1.0s", 1 * S),
    ("1.00s", 1 * S),
    ("1.004s", 1 * S + 4 * MS),
    ("1.0040s", 1 * S + 4 * MS),
    ("100.00100s", 100 * S + 1 * MS),
    ("10ns", 10 * NS),
    ("11us", 11 * US),
    ("12\u00b5s", 12 * US),
    ("12\u03bcs", 12 * US),
    ("13ms", 13 * MS),
    ("14s", 14 * S),
    ("15m", 15 * M),
    ("16h", 16 * H),
    ("3h30m", 3 * H + 30 * M),
    ("10.5s4m", 4 * M + 10 * S + 500 * MS),
    ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
    ("1h2m3s4ms5us6ns", H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS),
    ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
    ("52763797000ns", 52763797000),
    ("0.3333333333333333333h", 20 * M),
    ("9007199254740993ns", (1 << 53) + 1),
    ("9223372036854775807ns", (1 << 63) - 1),
    ("9223372036854775.807us", (1 << 63) - 1),
    ("9223372036s854ms775us807ns", (1 << 63) - 1),
    ("-9223372036854775808ns", -(1 << 63)),
    ("-9223372036854775.808us", -(1 << 63)),
    ("-9223372036s854ms775us808ns", -(1 << 63)),
    ("-2562047h47m16.854775808s", -(1 << 63)),
    ("0.100000000000000000000h", 6 * M),
    ("0.830103483285477580700h", 49 * M + 48 * S + 372539827),
]

# Go: parseDurationErrorTests, all "time: invalid duration <quoted>".
GO_PARSE_INVALID = [
    ("", '""'),
    ("-", '"-"'),
    ("s", '"s"'),
    (".", '"."'),
    ("-.", '"-."'),
    (".s", '".s"'),
    ("+.s", '"+.s"'),
    ("abc", '"abc"'),
    ("\ufffd", '"\\xef\\xbf\\xbd"'),
    ("\ufffd hello \ufffd world", '"\\xef\\xbf\\xbd hello \\xef\\xbf\\xbd world"'),
    ("9223372036854775810ns", '"9223372036854775810ns"'),
    ("9223372036854775808ns", '"9223372036854775808ns"'),
    ("-9223372036854775809ns", '"-9223372036854775809ns"'),
    ("9223372036854776us", '"9223372036854776us"'),
    ("3000000h", '"3000000h"'),
    ("9223372036854775.808us", '"9223372036854775.808us"'),
    ("9223372036854ms775us808ns", '"9223372036854ms775us808ns"'),
]

GO_PARSE_OTHER_ERRORS = [
    ("300", 'time: missing unit in duration "300"'),
    ("3", 'time: missing unit in duration "3"'),
    ("1h30", 'time: missing unit in duration "1h30"'),
    ("5x", 'time: unknown unit "x" in duration "5x"'),
    ("1d", 'time: unknown unit "d" in duration "1d"'),
    ("5 m", 'time: unknown unit " m" in duration "5 m"'),
    ("5M", 'time: unknown unit "M" in duration "5M"'),
    ("1é", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"'),
    ('1"', 'time: unknown unit "\\"" in duration "1\\""'),
]

# Go: time_test.go durationTests (String()).
GO_FORMAT = [
    ("0s", 0),
    ("1ns", 1),
    ("1.1\u00b5s", 1100),
    ("2.2ms", 2200 * US),
    ("3.3s", 3300 * MS),
    ("4m5s", 4 * M + 5 * S),
    ("4m5.001s", 4 * M + 5001 * MS),
    ("5h6m7.001s", 5 * H + 6 * M + 7001 * MS),
    ("8m0.000000001s", 8 * M + 1),
    ("2562047h47m16.854775807s", (1 << 63) - 1),
    ("-2562047h47m16.854775808s", -(1 << 63)),
]


@pytest.mark.parametrize(("text", "ns"), GO_PARSE_OK)
def test_parse_ns_matches_go(text: str, ns: int) -> None:
    assert _parse_ns(text) == ns


@pytest.mark.parametrize(("text", "ns"), GO_PARSE_OK)
def test_parse_go_duration_seconds(text: str, ns: int) -> None:
    assert parse_go_duration(text) == pytest.approx(ns / S)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("-1m", -60.0),
        ("300ms", 0.3),
        ("0", 0.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("1.5µs", 1.5e-6),
    ],
)
def test_parse_go_duration_brief_examples(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == seconds


@pytest.mark.parametrize(("text", "quoted"), GO_PARSE_INVALID)
def test_parse_go_duration_invalid(text: str, quoted: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == f"time: invalid duration {quoted}"


@pytest.mark.parametrize(("text", "message"), GO_PARSE_OTHER_ERRORS)
def test_parse_go_duration_unit_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


def test_parse_go_duration_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_go_duration(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0.0),
        (1800, 1800.0),
        (2.5, 2.5),
        (-1, -1.0),
        (-1.0, -1.0),
        ("5m", 300.0),
        (" 5m ", 300.0),
        ("1h30m", 5400.0),
        ("-1m", -60.0),
        ("0", 0.0),
        ("0s", 0.0),
        (float("-inf"), float("-inf")),
    ],
)
def test_parse_keep_alive(value: object, expected: float | None) -> None:
    result = parse_keep_alive(value)
    assert result == expected
    if result is not None:
        assert isinstance(result, float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("abc", 'time: invalid duration "abc"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        ("   ", 'time: invalid duration ""'),
    ],
)
def test_parse_keep_alive_bad_strings_use_go_text(value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_keep_alive(value)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [True, False, [], [1], {}, {"a": 1}, object(), float("nan")])
def test_parse_keep_alive_wrong_types(value: object) -> None:
    with pytest.raises(ValueError, match="^invalid keep_alive value: "):
        parse_keep_alive(value)


# Ollama: envconfig/config_test.go TestKeepAlive (negative values are returned as is here).
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 300.0),
        ("", 300.0),
        ("1s", 1.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("5m0s", 300.0),
        ("1h2m3s", 3723.0),
        ("0", 0.0),
        ("60", 60.0),
        ("120", 120.0),
        ("600", 600.0),
        ("3600", 3600.0),
        ("+5", 5.0),
        ("-0", 0.0),
        ("-1", -1.0),
        ("-1m", -60.0),
        (" 10m ", 600.0),
        ('"10m"', 600.0),
        ("'600'", 600.0),
        (' " 1h " ', 3600.0),
        (" ", 300.0),
        ("???", 300.0),
        ("1d", 300.0),
        ("1y", 300.0),
        ("1w", 300.0),
        ("1_000", 300.0),
        ("99999999999999999999", 300.0),
    ],
)
def test_env_keep_alive(raw: str | None, expected: float) -> None:
    assert env_keep_alive(raw) == expected


def test_env_keep_alive_warns_on_invalid(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.wire.durations"):
        assert env_keep_alive("forever") == DEFAULT_KEEP_ALIVE
    assert any("OLLAMA_KEEP_ALIVE" in r.getMessage() for r in caplog.records)


def test_env_keep_alive_valid_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.wire.durations"):
        env_keep_alive("10m")
        env_keep_alive("")
    assert not caplog.records


@pytest.mark.parametrize(("text", "ns"), GO_FORMAT)
def test_format_ns_matches_go(text: str, ns: int) -> None:
    assert _format_ns(ns) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (300, "5m0s"),
        (5400, "1h30m0s"),
        (0.5, "500ms"),
        (0, "0s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (3600, "1h0m0s"),
        (86400, "24h0m0s"),
        (1e-9, "1ns"),
        (1.5e-6, "1.5µs"),
        (-60, "-1m0s"),
        (-0.25, "-250ms"),
        (float("inf"), "2562047h47m16.854775807s"),
        (float("-inf"), "-2562047h47m16.854775808s"),
        (1e30, "2562047h47m16.854775807s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


def test_format_go_duration_nan() -> None:
    with pytest.raises(ValueError):
        format_go_duration(math.nan)


@pytest.mark.parametrize("seconds", [0, 0.001, 1, 90, 300, 5400, 86400 * 7, -1, -3723.5])
def test_format_parse_round_trip(seconds: float) -> None:
    assert parse_go_duration(format_go_duration(seconds)) == pytest.approx(seconds)
