"""Unit tests of the file parsers: metric lines, latest-metric choice, value files, meta.yaml."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlflow_fs2sql.errors import InvalidSource
from mlflow_fs2sql.parse import (
    MAX_DOUBLE,
    decode_text,
    parse_metric_lines,
    read_key_values,
    read_yaml_mapping,
    sanitize_metric,
)


def parse(text: str):
    return parse_metric_lines(text.encode(), "k", "/m/k", "r")


def test_three_field_lines_keep_file_order():
    points, latest, dups = parse("100 0.5 0\n200 0.25 1\n")
    assert points == [("k", 0.5, 100, 0, False), ("k", 0.25, 200, 1, False)]
    assert latest == ("k", 0.25, 200, 1, False)
    assert dups == 0


def test_two_field_line_means_step_zero_and_five_fields_carry_a_dataset():
    points, _, _ = parse("100 1.5\n200 2.5 3 eval-ds 6c3b2a1f\n")
    assert [(p[2], p[3], p[1]) for p in points] == [(100, 0, 1.5), (200, 3, 2.5)]


def test_nan_and_infinities_are_stored_like_mlflows_sql_store():
    points, _, _ = parse("1 nan 0\n2 inf 1\n3 -inf 2\n4 -0.0 3\n")
    assert points[0][1:] == (0.0, 1, 0, True)
    assert points[1][1] == MAX_DOUBLE and points[1][4] is False
    assert points[2][1] == -MAX_DOUBLE
    assert points[3][1] == 0.0


def test_identical_lines_are_kept_once_and_counted():
    points, _, dups = parse("5 1.0 1\n5 1.0 1\n5 2.0 1\n")
    assert [p[1] for p in points] == [1.0, 2.0]
    assert dups == 1


def test_nan_and_real_zero_at_the_same_step_are_different_rows():
    points, _, dups = parse("5 nan 1\n5 0.0 1\n")
    assert len(points) == 2 and dups == 0


def test_latest_follows_sql_rule_worked_example():
    # filestore-format.md §9: (1,100,5.0), (2,90,nan->0.0), (2,90,-1.0) -> step 2, 0.0, is_nan
    _, latest, _ = parse("100 5.0 1\n90 nan 2\n90 -1.0 2\n")
    assert latest == ("k", 0.0, 90, 2, True)


def test_latest_ties_keep_the_first_logged():
    _, latest, _ = parse("90 0.0 2\n90 nan 2\n")
    assert latest[4] is False


def test_crlf_line_endings_and_trailing_spaces_are_accepted():
    points, _, _ = parse("100 0.5 0\r\n200 0.25 1 \r\n")
    assert len(points) == 2


@pytest.mark.parametrize("text, fragment", [
    ("100 0.5 0 extra\n", "4 fields"),
    ("100\n", "1 fields"),
    ("100 abc 0\n", "cannot be parsed"),
    ("1.5e3 0.5 0\n", "cannot be parsed"),
    ("100 0.5 0\n\n200 1 1\n", "line 2"),
    ("", "empty metric file"),
])
def test_malformed_metric_files_name_the_line(text, fragment):
    with pytest.raises(InvalidSource) as err:
        parse(text)
    assert fragment in str(err.value)
    assert "/m/k" in str(err.value)


def test_invalid_utf8_names_the_byte():
    with pytest.raises(InvalidSource, match="not valid UTF-8"):
        decode_text(b"ok\xff", "/x")


def test_value_files_are_verbatim(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_bytes("x\r\ny\n".encode())
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"\x00junk")
    ignored = []
    assert read_key_values(str(tmp_path), "run", "r", ignored) == (
        ("a/b/c", "x\r\ny\n"), ("empty", ""))
    assert ignored == [str(tmp_path / ".DS_Store")]


@pytest.mark.parametrize("content, fragment", [
    ("", "is empty"),
    ("a: [1,\n", "not valid YAML"),
    ("- 1\n- 2\n", "holds a list"),
])
def test_bad_meta_yaml(tmp_path, content, fragment):
    path = tmp_path / "meta.yaml"
    path.write_text(content)
    with pytest.raises(InvalidSource, match=fragment):
        read_yaml_mapping(str(path), "run", "r")


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(st.tuples(st.integers(0, 2**62), st.one_of(finite, st.just(math.nan),
                                                            st.just(math.inf)),
                          st.integers(-2**40, 2**40)), min_size=1, max_size=50))
def test_metric_lines_round_trip_and_latest_is_the_sql_maximum(lines):
    text = "".join(f"{ts} {repr(v)} {step}\n" for ts, v, step in lines)
    points, latest, dups = parse(text)
    expected = []
    for ts, v, step in lines:
        value, is_nan = sanitize_metric(v)
        row = ("k", value, ts, step, is_nan)
        if (ts, step, value, is_nan) not in {(p[2], p[3], p[1], p[4]) for p in expected}:
            expected.append(row)
    assert points == expected
    assert dups == len(lines) - len(expected)
    best = max(expected, key=lambda p: (p[3], p[2], p[1]))  # max() keeps the first of ties
    assert (latest[3], latest[2], latest[1]) == (best[3], best[2], best[1])
