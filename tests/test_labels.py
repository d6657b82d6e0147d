from __future__ import annotations

import itertools

import pytest

from dramatiq_opmetrics.labels import MAX_LABELS, MAX_VALUE_LENGTH, make_label_set


def test_labels_key_is_sorted_key_value_pairs_joined_by_bars() -> None:
    label_set = make_label_set({"queue": "default", "actor": "send_email"})
    assert label_set.labels_key == "actor:send_email|queue:default"
    assert list(label_set.labels) == ["actor", "queue"]


def test_equal_label_sets_in_any_order_have_equal_keys() -> None:
    labels = {"a": "1", "b": "2", "c": "3"}
    keys = {make_label_set(dict(order)).labels_key for order in itertools.permutations(labels.items())}
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"a": "x|b:y"}, {"a": "x", "b": "y"}),
        ({"a": "x:y"}, {"a": "x\\:y"}),
        ({"a": "x\\", "b": "y"}, {"a": "x\\|b:y"}),
        ({"a": "x\\|b:y"}, {"a": "x", "b": "y"}),
        ({"a": "1|b:2|c:3"}, {"a": "1", "b": "2", "c": "3"}),
    ],
)
def test_separators_inside_values_never_make_two_label_sets_collide(
    first: dict[str, str], second: dict[str, str]
) -> None:
    assert make_label_set(first).labels_key != make_label_set(second).labels_key


def test_no_collisions_among_many_adversarial_label_sets() -> None:
    alphabet = ["a", ":", "|", "\\", "b"]
    values = ["".join(p) for n in range(1, 4) for p in itertools.product(alphabet, repeat=n)]
    seen: dict[str, tuple[tuple[str, str], ...]] = {}
    for first, second in itertools.product(values, repeat=2):
        label_set = make_label_set({"k": first, "l": second})
        pairs = tuple(label_set.labels.items())
        assert seen.setdefault(label_set.labels_key, pairs) == pairs
    for value in values:
        label_set = make_label_set({"k": value})
        pairs = tuple(label_set.labels.items())
        assert seen.setdefault(label_set.labels_key, pairs) == pairs


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ({"": "x"}, "''"),
        ({"bad key": "x"}, "'bad key'"),
        ({"a:b": "x"}, "'a:b'"),
        ({"a|b": "x"}, "'a|b'"),
        ({"9lives": "x"}, "'9lives'"),
        ({"actor": ""}, "'actor'"),
        ({"actor": 3}, "'actor'"),
        ({"actor": None}, "'actor'"),
        ({"actor": "x" * (MAX_VALUE_LENGTH + 1)}, "'actor'"),
        ({"actor": "nul\x00byte"}, "'actor'"),
        ({"k" * 65: "x"}, "'kkkkk"),
    ],
)
def test_bad_labels_raise_value_error_naming_the_key(labels: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("|", r"\|")):
        make_label_set(labels)


def test_too_many_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="too many labels"):
        make_label_set({f"k{i}": "v" for i in range(MAX_LABELS + 1)})


def test_the_longest_allowed_value_is_accepted() -> None:
    value = "x" * MAX_VALUE_LENGTH
    assert make_label_set({"actor": value}).labels["actor"] == value
