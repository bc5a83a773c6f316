"""Masked autoencoder: reconstruct each image from a copy with half of its grid patches hidden."""

from transfer.objectives.autoencoder import train_reconstruction

NAME = "masked"


def train(encoder, blocks, train, val_images, **kwargs):
    return train_reconstruction(NAME, encoder, blocks, train, val_images, **kwargs)
