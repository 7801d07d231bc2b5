"""The Lightning wiring: the LightningModule, callbacks, loggers, exact resume and the
cluster's requeue."""
