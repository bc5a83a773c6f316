"""The names options take, in one module that imports nothing heavy (no TensorFlow, no
scikit-learn): config.py and the CLI read them here, so `transfer --help` and `transfer compare`
start at once. The modules that implement them import the pure names from here; where an owner
builds its names from what it implements (the objectives' registry, the presets, the built-in
sources), tests/test_cli.py checks that they agree with these."""

READOUTS = ("auto", "avg", "multi", "stats", "flatten", "projector")
READOUT_CANDIDATES = ("avg", "multi", "stats")  # what "auto" chooses from, by cross-validation
PRESETS = ("lenet5", "resnet", "small", "vgg")  # transfer.architectures.PRESETS
AUGMENT_POLICIES = ("label-preserving", "orientation-free", "none")  # `--augment`; see transfer.augment
STRONG_VIEWS = ("full", "geometry")  # `--strong-view`: FixMatch's strong view; see transfer.augment.strong
STRATEGIES = ("auto", "one", "mirrored", "multiworker")  # tf.distribute; see transfer.distribute
PRECISIONS = ("float32", "mixed")  # mixed: Keras's mixed_bfloat16 policy (variables stay float32)
EXPORT_FORMATS = {"savedmodel": "tf_saved_model", "onnx": "onnx", "litert": "litert"}  # ours -> Keras's
OBJECTIVES = ("contrastive", "autoencoder", "denoising", "masked", "gan", "vicreg", "byol")  # the CLI's order
KMEANS = "kmeans"  # what made an encoder of k-means filters alone (pretrain --start kmeans --epochs 0): its objective
MADE_BY = (*OBJECTIVES, KMEANS)  # what the `objective` of a manifest and a row can name; experiment files' methods too
STARTS = ("random", KMEANS)  # `pretrain --start`: the encoder's weights before the objective; see transfer.kmeans
TWO_VIEW = ("contrastive", "vicreg", "byol")  # the objectives that learn from two random views of each image
SELECTIONS = ("typiclust", "probcover", "kcenter", "random")  # `select --strategy`; see transfer.selection
BY_FEATURES = tuple(s for s in SELECTIONS if s != "random")
CLASSIFIER_SELECTIONS = ("margin",)  # `select --strategy` with `--model`: rounds chosen by a classifier
BUDGET_SELECTIONS = ("random", "stratified", *BY_FEATURES)  # `fine-tune --selection`; see transfer.budget
BUILTINS = ("animals", "digits", "faces", "fills", "patches", "photos", "textures")  # transfer.builtins
