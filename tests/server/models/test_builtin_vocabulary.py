"""The built-in model's prompt vocabulary, as a client meets it."""

from __future__ import annotations

import pytest

from stepwatch.server.models.builtin import (
    ParsedPrompt,
    PromptError,
    parse_prompt,
    vocabulary,
)
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES


def test_full_prompt_with_filler_words() -> None:
    parsed = parse_prompt("A small red triangle on a dark background.")
    assert parsed == ParsedPrompt(shape="triangle", colour="red", size="small", background="dark")


def test_omitted_attributes_stay_unset() -> None:
    assert parse_prompt("blue circle") == ParsedPrompt(shape="circle", colour="blue")
    assert parse_prompt("") == ParsedPrompt()
    assert parse_prompt("the shape").requested() == {}


def test_synonyms_and_case_map_onto_the_vocabulary() -> None:
    assert parse_prompt("BIG Violet plus on white") == ParsedPrompt(
        shape="cross", colour="purple", size="large", background="light"
    )


def test_repeating_a_value_is_allowed() -> None:
    assert parse_prompt("red red circle") == ParsedPrompt(shape="circle", colour="red")


def test_unknown_word_names_the_word_and_lists_the_vocabulary() -> None:
    with pytest.raises(PromptError) as caught:
        parse_prompt("a fluffy red circle")
    message = str(caught.value)
    assert "'fluffy'" in message
    for attribute in ATTRIBUTES:
        assert attribute.name in message
        for value in attribute.values:
            assert value in message
    assert isinstance(caught.value, ValueError)
    assert caught.value.prompt == "a fluffy red circle"


def test_two_values_of_one_attribute_are_an_error() -> None:
    with pytest.raises(PromptError, match="two values of colour"):
        parse_prompt("red blue circle")
    with pytest.raises(PromptError, match="two values of background"):
        parse_prompt("circle on a dark light background")


@pytest.mark.parametrize("prompt", ["red circle #3", "red_circle", "circle 2"])
def test_symbols_and_digits_are_rejected(prompt: str) -> None:
    with pytest.raises(PromptError):
        parse_prompt(prompt)


def test_a_non_string_prompt_is_a_prompt_error() -> None:
    with pytest.raises(PromptError, match="expected a string"):
        parse_prompt(3)  # type: ignore[arg-type]


def test_canonical_text_parses_back_to_the_same_attributes() -> None:
    for parsed in (
        ParsedPrompt(shape="square", colour="green", size="large", background="light"),
        ParsedPrompt(colour="yellow", background="dark"),
        ParsedPrompt(size="small"),
        ParsedPrompt(),
    ):
        assert parse_prompt(parsed.text()) == parsed
    assert ParsedPrompt("triangle", "red", "small", "dark").text() == (
        "small red triangle on a dark background"
    )


def test_class_indices_follow_vocabulary_order() -> None:
    parsed = parse_prompt("orange cross on a light background")
    assert parsed.class_indices() == (3, 5, None, 1)


def test_vocabulary_for_clients() -> None:
    words = vocabulary()
    assert [a.name for a in words.attributes] == ["shape", "colour", "size", "background"]
    assert len(words.attributes[0].values) >= 4
    assert len(words.attributes[1].values) >= 6
    assert ("big", "large") in words.synonyms
    assert "background" in words.filler_words
    assert "shape: circle, square, triangle, cross" in words.describe()
