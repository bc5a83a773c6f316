"""The method vocabulary: a method's name <-> how it is run.

A method names what produced a fine-tune row, and compare groups by it:

- baselines (no pretraining): `pixels-logreg` (logistic regression on raw pixels),
  `random-frozen` (a head on a frozen random encoder), `random-top<K>` (the same,
  then its top K blocks trained), `scratch` (everything trained from random init);
- `<objective>-frozen`, `<objective>-top<K>`, `<objective>-finetuned`: an encoder
  pretrained with that objective, frozen under the head, with its top K blocks
  trained after the head, or trained whole;
- `<objective>` alone (in experiment files): the default fine-tune recipe;
- `kmeans` in place of an objective (`kmeans`, `kmeans-frozen`, ...): an encoder whose filters
  were set by k-means alone (`pretrain --start kmeans --epochs 0`), run the same ways;
- `keras-<backbone>-frozen`, `-top1`, `-finetuned` (e.g. `keras-mobilenetv3small-frozen`): an
  ImageNet backbone of keras.applications (`--encoder keras:NAME`) with its weights, run the
  same ways, and `keras-<backbone>-random-...` with random weights (`--weights none`): the
  baselines a Keras user runs first, so they count as baselines, not as pretraining;
- any of these (but `pixels-logreg`) with `-semi`: trained on the unlabeled pool
  too (FixMatch, `--unlabeled`), e.g. `scratch-semi`, `contrastive-top1-semi`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from transfer import backbones
from transfer.errors import TransferError
from transfer.vocabulary import KMEANS, MADE_BY, OBJECTIVES

_TOP = re.compile(r"^(?P<base>.+)-top(?P<k>\d+)$")
BASELINES = {
    "pixels-logreg": {"encoder": "pixels"},
    "random-frozen": {"encoder": "random", "freeze": "all", "unfreeze_top": 0},
    "scratch": {"encoder": "random", "freeze": "none"},
}


@dataclass(frozen=True)
class Method:
    """How a method is run.

    Attributes:
        objective: the pretraining objective, or None for a baseline.
        settings: FineTuneConfig fields it fixes (encoder for baselines, freeze, unfreeze_top).
    """

    objective: str | None
    settings: dict = field(default_factory=dict)
    semi: bool = False

    def fields(self, encoder: str | None, unlabeled: str | None) -> dict:
        """The FineTuneConfig fields that run this method: its settings, the pool when it learns
        from one (None otherwise), and `encoder` (its objective's pretrain run) when it has one."""
        return {**self.settings, "unlabeled": unlabeled if self.semi else None,
                **({"encoder": encoder} if self.objective else {})}


def parse(name: str) -> Method:
    """The Method a name stands for; an unknown name is refused."""
    if name.endswith("-semi") and name != "pixels-logreg-semi":
        method = parse(name[: -len("-semi")])
        return Method(method.objective, method.settings, semi=True)
    if name in BASELINES:
        return Method(None, dict(BASELINES[name]))
    top = _TOP.match(name)
    base, settings = name, {}
    if top:
        base, settings = top["base"], {"freeze": "all", "unfreeze_top": int(top["k"])}
    elif name.endswith("-frozen"):
        base, settings = name[: -len("-frozen")], {"freeze": "all", "unfreeze_top": 0}
    elif name.endswith("-finetuned"):
        base, settings = name[: -len("-finetuned")], {"freeze": "none"}
    if base == "random" and top:
        return Method(None, {"encoder": "random", **settings})
    if base.startswith("keras-") and settings:
        key = base[len("keras-"):]
        random = key.endswith("-random")
        key = key[: -len("-random")] if random else key
        if key in backbones.BACKBONES:
            return Method(None, {"encoder": backbones.PREFIX + key, **({"weights": "none"} if random else {}),
                                 **settings})
    if base not in MADE_BY:
        raise TransferError(f"unknown method '{name}'. Use a baseline ({', '.join(BASELINES)}, random-top<K>), "
                            f"an objective ({', '.join(OBJECTIVES)}) or {KMEANS} (k-means filters alone), "
                            "or either with -frozen|-top<K>|-finetuned, "
                            "each but pixels-logreg optionally with -semi")
    return Method(base, settings)


def name(objective: str | None, encoder: str, freeze: str, unfreeze_top: int = 0, semi: bool = False) -> str:
    """The name of a fine-tune: `objective` is the pretrained encoder's (None for `random`
    and `pixels` encoders); `semi` when it learns from unlabeled images too."""
    base = _name(objective, encoder, freeze, unfreeze_top)
    return f"{base}-semi" if semi and base != "pixels-logreg" else base


def _name(objective, encoder, freeze, unfreeze_top) -> str:
    if encoder == "pixels":
        return "pixels-logreg"
    if backbones.is_backbone(encoder):
        base = f"keras-{backbones.name_of(encoder)}" + ("" if objective else "-random")
        if freeze == "none":
            return f"{base}-finetuned"
        return f"{base}-top{unfreeze_top}" if unfreeze_top else f"{base}-frozen"
    if objective is None:
        if freeze == "none":
            return "scratch"
        return f"random-top{unfreeze_top}" if unfreeze_top else "random-frozen"
    if freeze == "none":
        return f"{objective}-finetuned"
    return f"{objective}-top{unfreeze_top}" if unfreeze_top else f"{objective}-frozen"


def chosen_by_encoder(features) -> bool:
    """Were a selection's features a pretrained encoder's (a run directory, or the objective naming
    it in a budget's name), not raw pixels, a random encoder or none?"""
    return str(features or "").split(" (")[0] not in ("", "pixels", "random")


def is_baseline(method: str) -> bool:
    """True for methods that use no pretraining (what pretraining is compared against); a
    method shown with its settings (`scratch [experiment=a]`, see `comparison.split_settings`)
    is its method's."""
    try:
        return parse(str(method).split(" [")[0]).objective is None
    except TransferError:
        return False
