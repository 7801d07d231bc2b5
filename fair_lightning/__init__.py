"""fair_lightning: fair multimodal hireability scoring with label-free adversarial removal."""
