"""Benchmark: one FixMatch training step, as `transfer fine-tune --unlabeled` runs it and
in the reference form, side by side in one run.

- teacher: pseudo-labels from the model in inference mode with no gradient; only the
  labeled images and the strong views take the trained forward and backward pass
  (`transfer.semi.FixMatch`);
- reference: all three views (labeled, weak and strong unlabeled) in one trained
  pass, as Sohn et al.'s code does, so a third of the backward pass is spent on rows
  whose gradient is zero;
- supervised: the augmented supervised step a plain fine-tune takes (labeled images
  only), for scale.

The same classifier (the `small` encoder + a linear head, random weights: the cost does
not depend on them) and the same batch (`--batch-size` labeled images, `--mu` times as
many unlabeled), digits at `--image-size`; the modes take turns for `--repeats` rounds
(the machine is shared and noisy), each in its own process (several models in one
process slow each other down), and the table gives the median.

    python benchmarks/fixmatch_step.py [--image-size 16] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reference_fixmatch():
    import keras
    from keras import ops

    from transfer import semi

    class Reference(semi.FixMatch):
        """FixMatch with the weak views in the trained pass (one batch for BatchNorm)."""

        def losses_of(self, x_l, y_l, x_u, training: bool = True):
            weak_l, weak_u = self.weak(x_l, training=True), self.weak(x_u, training=True)
            strong_u = self.strong(x_u, training=True)
            n_l, n_u = ops.shape(x_l)[0], ops.shape(x_u)[0]
            p = self.classifier(ops.concatenate([weak_l, weak_u, strong_u], axis=0), training=training)
            p_l, p_weak, p_strong = p[:n_l], ops.stop_gradient(p[n_l:n_l + n_u]), p[n_l + n_u:]
            labeled = ops.mean(keras.losses.sparse_categorical_crossentropy(y_l, p_l))
            mask = ops.cast(ops.max(p_weak, axis=1) >= self.threshold, p.dtype)
            unlabeled = ops.mean(mask * keras.losses.sparse_categorical_crossentropy(ops.argmax(p_weak, axis=1),
                                                                                      p_strong))
            return labeled + self.weight * unlabeled, labeled, unlabeled, mask, p_l

    return Reference


MODES = {"teacher": "teacher (transfer)", "reference": "reference (all views trained)",
         "supervised": "supervised (labeled only)"}


def worker(mode: str, image_size: int, batch_size: int, mu: int, steps: int) -> float:
    """ms per step of `mode` after tracing and ten warm-up steps (run in its own process:
    several models in one process slow each other down)."""
    import keras
    import tensorflow as tf

    from transfer import augment, builtins, models, semi
    from transfer.architectures import preset_blocks

    digits = builtins.load("digits", image_size, None, True, split="all")
    x_l, y_l = digits.images[:batch_size], digits.label_array()[:batch_size]
    x_u = digits.images[batch_size:batch_size * (1 + mu)]
    keras.utils.set_random_seed(0)
    encoder = models.build_encoder(x_l.shape[1:], preset_blocks("small"), "small")
    features = models.build_features(encoder, "avg", frozen=False)
    classifier = models.build_classifier(features, models.build_head(features.output.shape[1], 10, (), 0.0))
    if mode == "supervised":
        model = augment.training_model(classifier, augment.build("label-preserving"))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        ds = tf.data.Dataset.from_tensors((x_l, y_l)).repeat()
    else:
        cls = semi.FixMatch if mode == "teacher" else reference_fixmatch()
        model = cls(classifier, augment.build("label-preserving"), augment.strong("label-preserving"))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        ds = tf.data.Dataset.from_tensors(((x_l, y_l), x_u)).repeat()
    model.fit(ds, steps_per_epoch=10, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mu", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = [str(args.image_size), str(args.batch_size), str(args.mu), str(args.steps)]
    if args.worker:
        print(json.dumps(worker(args.worker, *map(int, shape))))
        return
    times = {mode: [] for mode in MODES}
    for _ in range(args.repeats):  # the modes take turns
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--image-size", shape[0],
                                  "--batch-size", shape[1], "--mu", shape[2], "--steps", shape[3]],
                                 capture_output=True, text=True, check=True).stdout
            times[mode].append(json.loads(out.strip().splitlines()[-1]))
    teacher = statistics.median(times["teacher"])
    print(f"FixMatch step on digits {args.image_size}x{args.image_size}: {args.batch_size} labeled + "
          f"{args.mu * args.batch_size} unlabeled images ({args.steps} steps x {args.repeats} rounds, "
          "one process each, median)")
    print(f"{'mode':32s} {'ms/step':>8s} {'vs teacher':>10s}")
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"{MODES[mode]:32s} {median:8.1f} {median / teacher:9.2f}x")
    print(f"2,000 steps (the default --steps): teacher {teacher * 2:.0f} s, "
          f"reference {statistics.median(times['reference']) * 2:.0f} s")


if __name__ == "__main__":
    main()
