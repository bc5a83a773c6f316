"""transfer: pretrain convolutional bottom layers on unlabeled images, reuse them on labeled tasks."""

__version__ = "0.1.0"
