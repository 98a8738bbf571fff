"""Every limit of the stepwatch protocol, in one place.

The decoder refuses anything outside these bounds. A server may enforce tighter bounds of its
own (fewer steps, smaller images, a smaller frame size) and announces the ones in force in
``welcome.limits``; it never accepts more than the protocol does.

String lengths count characters (Unicode code points), not bytes. Every integer on the wire
fits in 53 bits, so clients in languages whose numbers are doubles (JavaScript) read it exactly.
"""

from __future__ import annotations

from typing import Final

#: The largest integer any field carries (``Number.MAX_SAFE_INTEGER`` in JavaScript).
MAX_INT: Final = 2**53 - 1

# Frames.

#: Largest frame a client may send (client frames carry no images).
MAX_CLIENT_FRAME_BYTES: Final = 64 * 1024
#: Largest frame a server may send (a ``finished`` with a full-size PNG and its history).
MAX_SERVER_FRAME_BYTES: Final = 24 * 1024 * 1024
#: Deepest nesting of arrays and maps in a frame; the top-level map is depth 1.
MAX_NESTING_DEPTH: Final = 8

# Strings, in characters.

#: Names: samplers, schedulers, verifiers, capabilities, score components, limit keys, the
#: client's and the server's names.
MAX_NAME_CHARS: Final = 64
#: Model identifiers (a hub id such as ``org/model-name`` or ``builtin:shapes``).
MAX_MODEL_ID_CHARS: Final = 128
#: Identifiers the server makes (``run_id``) and the client makes (``request_id``).
MAX_ID_CHARS: Final = 64
#: Control tokens are at least this long, so they cannot be guessed.
MIN_CONTROL_TOKEN_CHARS: Final = 16
#: API tokens and control tokens.
MAX_TOKEN_CHARS: Final = 256
#: ``prompt`` and ``negative_prompt``.
MAX_PROMPT_CHARS: Final = 4000
#: Human-readable descriptions of models and verifiers.
MAX_DESCRIPTION_CHARS: Final = 1000
#: Human-readable error messages and the reasons given for decisions.
MAX_MESSAGE_CHARS: Final = 1000
#: The ``field`` of an error, a path such as ``history[3].components.edges``.
MAX_FIELD_PATH_CHARS: Final = 200

# Binary payloads, in bytes.

#: One preview thumbnail (WebP, JPEG or PNG).
MAX_PREVIEW_BYTES: Final = 1024 * 1024
#: The final image (PNG); room for an incompressible 2048 x 2048 RGB image.
MAX_IMAGE_BYTES: Final = 16 * 1024 * 1024
#: One uploaded input image (``POST /api/uploads``: PNG, JPEG or WebP), as sent.
MAX_UPLOAD_BYTES: Final = 8 * 1024 * 1024
#: Pixels of one uploaded image (width x height, read from its header before it is decoded).
MAX_UPLOAD_PIXELS: Final = 2048 * 2048
#: An upload's id: the SHA-256 of its bytes, as 64 lowercase hexadecimal digits.
UPLOAD_ID_CHARS: Final = 64

# Lists and maps, in entries.

#: Runs one ``hello`` may resume.
MAX_RESUME_RUNS: Final = 32
#: Capabilities, limits, models, verifiers in ``welcome``; samplers or schedulers per model.
MAX_LISTED: Final = 64
#: Words in one model's prompt vocabulary.
MAX_VOCABULARY_WORDS: Final = 4096
#: Named score components of one check.
MAX_COMPONENTS: Final = 16

# Numbers.

#: Denoising steps of one run; also the longest quality history (at most one check a step).
MIN_STEPS: Final = 1
MAX_STEPS: Final = 1000
#: Image width and height in pixels.
MIN_SIZE: Final = 8
MAX_SIZE: Final = 2048
#: Classifier-free guidance scale (``cfg`` and ``cfg_max``).
MIN_CFG: Final = 0.0
MAX_CFG: Final = 30.0
#: The factor CFG is multiplied by when quality is low; 1.0 never raises it.
MIN_SCALE_FACTOR: Final = 1.0
MAX_SCALE_FACTOR: Final = 4.0
#: Scores, score thresholds: verifiers score in [0, 1].
MIN_SCORE: Final = 0.0
MAX_SCORE: Final = 1.0
#: Consecutive checks at or above the threshold before an early stop.
MIN_PATIENCE: Final = 1
MAX_PATIENCE: Final = 100
#: Longest side of a preview thumbnail in pixels (``preview_size`` 0 turns previews off).
MAX_PREVIEW_SIZE: Final = 512
#: Candidates of one search run (``start.candidates``).
MAX_CANDIDATES: Final = 64
#: ``start.control_scale``, the ControlNet's conditioning scale.
MAX_CONTROL_SCALE: Final = 5.0
#: Feynman–Kac's λ.
MAX_FK_LAMBDA: Final = 1000.0
#: Durations (``elapsed``, ``eta``) in seconds, about 115 days.
MAX_SECONDS: Final = 10_000_000.0


def protocol_limits() -> dict[str, int]:
    """The protocol's own limits under the names ``welcome.limits`` uses.

    A server starts from these, lowers the ones its configuration tightens, adds its own
    (``max_queue``, ``max_runs_per_connection``) and sends the result in ``welcome``.
    """
    return {
        "max_frame_bytes": MAX_CLIENT_FRAME_BYTES,
        "max_prompt_chars": MAX_PROMPT_CHARS,
        "max_steps": MAX_STEPS,
        "max_width": MAX_SIZE,
        "max_height": MAX_SIZE,
        "max_preview_size": MAX_PREVIEW_SIZE,
        "max_resume_runs": MAX_RESUME_RUNS,
        "max_candidates": MAX_CANDIDATES,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "max_upload_pixels": MAX_UPLOAD_PIXELS,
    }
