"""The input images a pipeline takes, and the ones a run hands it.

Image-to-image, inpainting and ControlNet pipelines name their inputs differently: an img2img
pipeline's ``image`` is its init image, a text-to-image ControlNet pipeline's ``image`` is its
control image, and the ControlNet img2img and inpaint pipelines take ``image`` and
``control_image``. :func:`input_slots` reads the pipeline's components and its ``__call__``
parameters once, at load, and says which of the protocol's roles (``image``, ``mask``,
``control_image``) the pipeline takes, under which argument, and whether it takes ``strength``
and a ControlNet conditioning scale. :func:`check_inputs` holds a run's images to them at
:meth:`~.model.LoadedModel.resolve`, and :func:`input_arguments` hands them to the call.

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from stepwatch.protocol import ErrorCode

from .errors import ParamError

__all__ = [
    "ROLES",
    "InputImages",
    "InputSettings",
    "InputSlots",
    "check_inputs",
    "image_size",
    "input_arguments",
    "input_slots",
    "resolve_inputs",
]

#: The protocol's input roles, in the order ``start`` lists them.
ROLES: Final = ("image", "mask", "control_image")
_NOUN: Final = {"image": "init image", "mask": "mask", "control_image": "control image"}
_ARTICLE: Final = {"image": "an", "mask": "a", "control_image": "a"}
_INVALID: Final = ErrorCode.INVALID_UPLOAD


@dataclass(frozen=True)
class InputImages:
    """A run's decoded input images (``PIL.Image``: RGB, the mask greyscale), by role."""

    image: Any = None
    mask: Any = None
    control_image: Any = None

    def given(self) -> dict[str, Any]:
        """The images present, by role."""
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}


@dataclass(frozen=True)
class InputSlots:
    """What a pipeline takes: the call argument of each role it needs, and its defaults for
    ``strength`` and the ControlNet's conditioning scale (``None`` where it takes none)."""

    arguments: Mapping[str, str] = field(default_factory=dict)
    strength: float | None = None
    control_scale: float | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role in ROLES if role in self.arguments)


def input_slots(pipeline: Any) -> InputSlots:
    """The input images ``pipeline`` takes, read from its ``__call__`` and its ``controlnet``."""
    parameters = inspect.signature(pipeline.__call__).parameters
    arguments: dict[str, str] = {}
    controlled = getattr(pipeline, "controlnet", None) is not None
    if controlled:
        arguments["control_image"] = "control_image" if "control_image" in parameters else "image"
    if "image" in parameters and arguments.get("control_image") != "image":
        arguments["image"] = "image"
    if "mask_image" in parameters:
        arguments["mask"] = "mask_image"
    return InputSlots(
        arguments=arguments,
        strength=_float_default(parameters, "strength") if "image" in arguments else None,
        control_scale=_float_default(parameters, "controlnet_conditioning_scale")
        if controlled
        else None,
    )


def _float_default(parameters: Mapping[str, inspect.Parameter], name: str) -> float | None:
    parameter = parameters.get(name)
    if parameter is None:
        return None
    default = parameter.default
    return float(default) if isinstance(default, int | float) else 1.0


def check_inputs(slots: InputSlots, ids: Mapping[str, str | None], images: InputImages) -> None:
    """Raise :class:`~.errors.ParamError` (``invalid_upload``) unless the run names exactly the
    images its model takes (``ids``: the upload id of each role, ``images``: them decoded) and
    the mask has the init image's size."""
    for role in ROLES:
        named = ids.get(role) is not None
        if named and role not in slots.arguments:
            raise ParamError(role, f"this model takes no {_NOUN[role]}", _INVALID)
        if not named and role in slots.arguments:
            raise ParamError(
                role,
                f"this model needs {_ARTICLE[role]} {_NOUN[role]}: upload one and name its id",
                _INVALID,
            )
        if named and getattr(images, role) is None:
            raise ParamError(role, f"upload {ids[role]} was not loaded", ErrorCode.INTERNAL)
    mask, image = images.mask, images.image
    if mask is not None and image is not None and mask.size != image.size:
        width, height = image.size
        raise ParamError(
            "mask",
            f"the mask is {mask.size[0]}x{mask.size[1]}, "
            f"the image {width}x{height}: they must be the same size",
            _INVALID,
        )


@dataclass(frozen=True)
class InputSettings:
    """What a run's input images make of it: the strength and ControlNet scale it uses
    (``None`` where its model takes none) and the steps it runs (``strength x steps``)."""

    strength: float | None
    control_scale: float | None
    steps_run: int


def resolve_inputs(
    slots: InputSlots,
    ids: Mapping[str, str | None],
    images: InputImages,
    *,
    strength: float | None,
    control_scale: float | None,
    steps: int,
    candidates: int,
) -> InputSettings:
    """Check a run's images (:func:`check_inputs`) and fill in the settings its model takes
    (``strength``, ``control_scale``: as asked, ``None`` for the model's default);
    raise :class:`~.errors.ParamError` naming the field a run cannot use."""
    check_inputs(slots, ids, images)
    strength = _setting(strength, slots.strength, "strength")
    control_scale = _setting(control_scale, slots.control_scale, "control_scale")
    steps_run = steps if strength is None else min(int(steps * strength), steps)
    if steps_run < 1:
        raise ParamError("strength", "strength x steps must make at least one step")
    if images.given() and candidates > 1:
        raise ParamError("candidates", "a search takes no input images yet; use one candidate")
    return InputSettings(strength, control_scale, steps_run)


def _setting(asked: float | None, default: float | None, name: str) -> float | None:
    """A setting only some models take: the asked value or the model's default; refused by a
    model that takes none."""
    if default is None:
        if asked is not None:
            raise ParamError(name, f"this model takes no {name}")
        return None
    return default if asked is None else asked


def image_size(
    size: tuple[int, int], width: int | None, height: int | None, fixed: bool
) -> tuple[int, int]:
    """The size of a run from an init image of ``size``: as the pipeline's image processor
    makes it (each side rounded down to a multiple of 8), or the asked ``width`` / ``height``
    where the model resizes (``fixed``: it cannot)."""
    fitted = tuple(side - side % 8 for side in size)
    for name, side, asked in zip(("width", "height"), fitted, (width, height), strict=True):
        if side < 8:
            raise ParamError("image", f"the init image is {size[0]}x{size[1]}: too small", _INVALID)
        if asked is not None and asked != side and fixed:
            raise ParamError(name, f"this model makes images of the init image's size, {side}")
    return (fitted[0] if width is None else width, fitted[1] if height is None else height)


def input_arguments(
    slots: InputSlots,
    images: InputImages | None,
    strength: float | None,
    control_scale: float | None,
) -> dict[str, Any]:
    """The pipeline call's arguments for a run's input images and settings."""
    arguments: dict[str, Any] = {}
    for role, image in (images.given() if images is not None else {}).items():
        arguments[slots.arguments[role]] = image
    if strength is not None:
        arguments["strength"] = strength
    if control_scale is not None:
        arguments["controlnet_conditioning_scale"] = control_scale
    return arguments
