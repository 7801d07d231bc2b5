"""Plain nn.Module components (no Lightning): encoders, fusion, scorer, adversaries."""

from fair_lightning.models.adversaries import (
    AttributeAdversary,
    FaceBank,
    FaceEncoder,
    FaceMatchDiscriminator,
    GradientReversal,
    grad_reverse,
    sample_pairs,
)
from fair_lightning.models.dependence import kernel_dependence
from fair_lightning.models.scorer import REPRESENTATIONS, MultimodalScorer, ScorerOutput

__all__ = [
    "AttributeAdversary", "FaceBank", "FaceEncoder", "FaceMatchDiscriminator", "GradientReversal",
    "MultimodalScorer", "REPRESENTATIONS", "ScorerOutput", "grad_reverse", "kernel_dependence", "sample_pairs",
]
