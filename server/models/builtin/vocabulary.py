"""The built-in model's vocabulary and its prompt parser.

A prompt names at most one value of each attribute, in any order, with filler words allowed:
"small red triangle on a dark background", "a blue circle", "large square". An attribute the prompt
leaves out is sampled by the model. Call :func:`parse_prompt` on every prompt before a run starts;
it raises :class:`PromptError` (a :class:`ValueError`) naming the offending word and the whole
vocabulary, so the message can be shown to a user as it is.

The numbering here is the model's: value ``i`` of an attribute has class index ``i`` in the data
generator and the classifiers, and embedding row ``i + 1`` in the attribute encoder (row 0 is the
attribute's "omitted" entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Attribute:
    """One attribute a prompt can name, with its values in class-index order."""

    name: str
    values: tuple[str, ...]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("shape", ("circle", "square", "triangle", "cross")),
    Attribute("colour", ("red", "green", "blue", "yellow", "purple", "orange")),
    Attribute("size", ("small", "large")),
    Attribute("background", ("dark", "light")),
)

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(attribute.name for attribute in ATTRIBUTES)

# Other spellings users reach for; each maps onto a value above.
SYNONYMS: dict[str, str] = {
    "big": "large",
    "tiny": "small",
    "plus": "cross",
    "violet": "purple",
    "black": "dark",
    "white": "light",
}

FILLER_WORDS: frozenset[str] = frozenset(
    {"a", "an", "the", "on", "in", "with", "of", "and", "against", "over", "background", "shape"}
)

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Vocabulary:
    """What a client may put in a prompt for the built-in model."""

    attributes: tuple[Attribute, ...]
    synonyms: tuple[tuple[str, str], ...]
    filler_words: tuple[str, ...]

    def describe(self) -> str:
        """Return a one-paragraph, human-readable listing of the vocabulary."""
        parts = [f"{a.name}: {', '.join(a.values)}" for a in self.attributes]
        return "; ".join(parts) + f" (filler words allowed: {', '.join(self.filler_words)})"


def vocabulary() -> Vocabulary:
    """Return the vocabulary, for clients (the server lists it in ``welcome``)."""
    return Vocabulary(
        attributes=ATTRIBUTES,
        synonyms=tuple(sorted(SYNONYMS.items())),
        filler_words=tuple(sorted(FILLER_WORDS)),
    )


class PromptError(ValueError):
    """A prompt the built-in model cannot follow; the message lists the vocabulary."""

    def __init__(self, prompt: str, problem: str) -> None:
        self.prompt = prompt
        self.problem = problem
        super().__init__(f"{problem} in prompt {prompt!r}. The built-in model knows {_LISTING}")


_LISTING = vocabulary().describe()

_VALUE_OWNER: dict[str, tuple[str, int]] = {
    value: (attribute.name, index)
    for attribute in ATTRIBUTES
    for index, value in enumerate(attribute.values)
}


@dataclass(frozen=True)
class ParsedPrompt:
    """The attributes a prompt requests; ``None`` means omitted (the model samples it)."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    background: str | None = None

    def requested(self) -> dict[str, str]:
        """Return the named attributes only, in vocabulary order."""
        values = (self.shape, self.colour, self.size, self.background)
        return {name: v for name, v in zip(ATTRIBUTE_NAMES, values, strict=True) if v is not None}

    def class_indices(self) -> tuple[int | None, ...]:
        """Return each attribute's class index, or ``None`` where omitted, in vocabulary order."""
        values = (self.shape, self.colour, self.size, self.background)
        return tuple(None if v is None else _VALUE_OWNER[v][1] for v in values)

    def text(self) -> str:
        """Return the canonical phrase for these attributes ("small red triangle on a dark
        background"), the empty string when nothing is requested."""
        words = [w for w in (self.size, self.colour, self.shape) if w is not None]
        if self.background is not None:
            noun = [] if self.shape is not None else ["shape"]
            words += noun + ["on", "a", self.background, "background"]
        return " ".join(words)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse ``prompt`` into the attributes it requests.

    Raises :class:`PromptError` for a word outside the vocabulary or for two values of one
    attribute ("red blue circle"). Case and punctuation are ignored.
    """
    if not isinstance(prompt, str):
        raise PromptError(repr(prompt), f"expected a string, got {type(prompt).__name__}")
    chosen: dict[str, str] = {}
    for word in _WORD.findall(prompt.lower()):
        if word in FILLER_WORDS:
            continue
        value = SYNONYMS.get(word, word)
        owner = _VALUE_OWNER.get(value)
        if owner is None:
            raise PromptError(prompt, f"unknown word {word!r}")
        attribute = owner[0]
        if chosen.get(attribute, value) != value:
            raise PromptError(
                prompt, f"two values of {attribute} ({chosen[attribute]!r} and {value!r})"
            )
        chosen[attribute] = value
    leftover = _WORD.sub("", prompt.lower())
    if re.search(r"[^\s,.;:!?'\"-]", leftover):
        raise PromptError(prompt, "characters other than words and punctuation")
    return ParsedPrompt(**chosen)
