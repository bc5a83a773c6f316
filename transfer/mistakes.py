"""What a classifier gets wrong, as fastai's ClassificationInterpretation shows it: the
confusion matrix of the test split (CSV and PNG) and its most confident mistakes (a
contact sheet, and a CSV naming them), written into every fine-tune's run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer import features, outputs, stream

TOP = 16  # mistakes shown


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def most_confident_mistakes(probs: np.ndarray, labels: np.ndarray, top: int = TOP) -> np.ndarray:
    """Rows of the wrong predictions, the most confident first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:top]


def write(folder: Path, classifier, test: stream.ImageSet, class_names: list[str]) -> dict:
    """confusion.csv, confusion.png, mistakes.csv and mistakes.png in `folder` for the images of
    `test`; returns counts."""
    probs, labels, positions = features.compute(classifier, test)
    source = test.listing
    if len(probs) == 0:
        return {}
    predicted = probs.argmax(axis=1)
    counts = confusion(labels, predicted, len(class_names))
    outputs.write_csv(folder / "confusion.csv", ["true \\ predicted", *class_names],
                        ([name, *row] for name, row in zip(class_names, counts.tolist())))
    _plot_confusion(counts, class_names, folder / "confusion.png")
    worst = most_confident_mistakes(probs, labels)
    outputs.write_csv(folder / "mistakes.csv", ["path", "true", "predicted", "probability"],
                        ([source.name(positions[r]), class_names[labels[r]], class_names[predicted[r]],
                          f"{probs[r, predicted[r]]:.4f}"] for r in worst))
    if len(worst):
        images, kept = stream.load_in_order(source, positions[worst], test.image_size)
        row = {int(positions[r]): r for r in worst}
        _plot_mistakes([(image, f"{class_names[labels[r]]} → {class_names[predicted[r]]} ({probs[r, predicted[r]]:.2f})")
                        for image, r in zip(images, (row[p] for p in kept))], folder / "mistakes.png")
    return {"mistakes": int((predicted != labels).sum())}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(counts: np.ndarray, names: list[str], path: Path) -> None:
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(counts, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    outputs.replace(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _plot_mistakes(shown: list[tuple[np.ndarray, str]], path: Path) -> None:
    plt = _pyplot()
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, title) in zip(axes.ravel(), shown):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image[..., :3], cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    outputs.replace(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
