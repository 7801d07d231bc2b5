"""Plain nn.Module components (no Lightning): encoders, fusion, scorer, adversaries,
objectives."""

from fair_lightning.models.adversaries import (
    ADVERSARIES,
    Adversary,
    AdversaryOutput,
    AttributeAdversary,
    FaceBank,
    FaceEncoder,
    FaceMatchAdversary,
    FaceMatchDiscriminator,
    LabelAdversary,
    grad_reverse,
    sample_pairs,
)
from fair_lightning.models.dependence import kernel_dependence
from fair_lightning.models.objectives import (
    OBJECTIVES,
    ConfusionObjective,
    DependenceObjective,
    MinimaxObjective,
    Objective,
    ReversalObjective,
)
from fair_lightning.models.scorer import (
    REPRESENTATIONS,
    SCORER_REPRESENTATIONS,
    MultimodalScorer,
    ScorerOutput,
)

__all__ = [
    "ADVERSARIES", "OBJECTIVES", "REPRESENTATIONS", "SCORER_REPRESENTATIONS", "Adversary", "AdversaryOutput",
    "AttributeAdversary", "ConfusionObjective", "DependenceObjective", "FaceBank", "FaceEncoder",
    "FaceMatchAdversary", "FaceMatchDiscriminator", "LabelAdversary",
    "MinimaxObjective", "MultimodalScorer", "Objective", "ReversalObjective", "ScorerOutput",
    "grad_reverse", "kernel_dependence", "sample_pairs",
]
