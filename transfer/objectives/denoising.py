"""Denoising autoencoder: reconstruct each image from a copy with Gaussian noise added."""

from transfer.objectives.autoencoder import train_reconstruction

NAME = "denoising"


def train(encoder, blocks, train, val_images, **kwargs):
    return train_reconstruction(NAME, encoder, blocks, train, val_images, **kwargs)
