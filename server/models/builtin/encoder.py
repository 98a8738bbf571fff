"""The attribute encoder: the built-in model's text encoder.

It turns a parsed prompt into one conditioning vector, the sum of one learned embedding per
attribute. Each attribute has its own "omitted" row (index 0), so a prompt that leaves an
attribute out asks the model to sample it, and the all-omitted vector is the unconditional input
that classifier-free guidance contrasts against. The UNet adds the vector to its time embedding
(``class_embed_type="identity"``).

The encoder is a diffusers model (``ModelMixin`` + ``ConfigMixin``), so the pipeline saves and
loads it like any other component.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt

OMITTED = 0


class AttributeEncoder(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Sums per-attribute embeddings into one vector of ``embedding_dim``."""

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(
        self,
        num_values: tuple[int, ...] = tuple(len(a.values) for a in ATTRIBUTES),
        embedding_dim: int = 128,
        init_std: float = 0.3,
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, embedding_dim) for n in num_values)
        for table in self.tables:
            nn.init.normal_(table.weight, std=init_std)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Map N×A embedding indices (0 = omitted, value ``i`` at ``i + 1``) to N×D vectors."""
        columns = indices.unbind(dim=1)
        rows = [table(column) for table, column in zip(self.tables, columns, strict=True)]
        return torch.stack(rows).sum(dim=0)


def prompt_indices(prompts: list[ParsedPrompt], device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the N×A embedding indices of parsed prompts (0 where an attribute is omitted)."""
    rows = [[OMITTED if c is None else c + 1 for c in p.class_indices()] for p in prompts]
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(
        len(prompts), len(ATTRIBUTES)
    )
