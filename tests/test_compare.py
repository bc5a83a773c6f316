"""compare as an analyst uses it: several tables, filters, paired differences with intervals."""

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from cli import main
from transfer import comparison, stats


def invoke(*args, verbose=True):
    """compare, with every verdict sentence (--verbose) unless told otherwise."""
    args = [str(a) for a in args]
    extra = ["--verbose"] if verbose and not {"--format"} & set(args) else []
    return CliRunner().invoke(main, ["compare", *args, *extra], catch_exceptions=False)


def write_table(path, accuracies: dict, data="digits", budget="5", arch="small", seeds=range(5)):
    """A results table: one fine-tune row per method and seed; accuracies[method][k] for seed k."""
    rows = [{"command": "fine-tune", "status": "ok", "data": data, "method": m, "labels_per_class": budget,
             "seed": s, "arch": arch, "test_accuracy": acc[k], "seconds": 2.0 + k}
            for m, acc in accuracies.items() for k, s in enumerate(seeds)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# seed-to-seed swings of +-10 points shared by both methods (the same labeled draw per seed),
# with the pretrained method 2-3 points above scratch on every seed
SCRATCH = [0.70, 0.90, 0.75, 0.85, 0.80]
PRETRAINED = [0.72, 0.93, 0.77, 0.88, 0.82]


def test_paired_difference_matches_the_t_interval_formula():
    d = np.array(PRETRAINED) - np.array(SCRATCH)
    half = scipy_stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    got = stats.difference(pd.Series(PRETRAINED), pd.Series(SCRATCH))
    assert got["kind"] == "paired" and got["seeds"] == 5
    assert got["diff"] == pytest.approx(d.mean()) and got["low"] == pytest.approx(d.mean() - half)
    assert got["high"] == pytest.approx(d.mean() + half) and stats.excludes_zero(got["low"], got["high"])


def test_unpaired_fallback_is_welch_and_labelled():
    a, b = pd.Series([0.8, 0.82, 0.84], index=[0, 1, 2]), pd.Series([0.7, 0.75], index=[5, 6])
    got = stats.difference(a, b)
    welch = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert got["kind"] == "unpaired" and got["seeds"] == 0
    assert got["low"] == pytest.approx(ci.low) and got["high"] == pytest.approx(ci.high)


def test_a_consistent_paired_win_is_marked_though_the_spreads_overlap(tmp_path):
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-top1": PRETRAINED})
    result = invoke(table, "--format", "csv")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(io.StringIO(result.output)).set_index("method")
    row = out.loc["contrastive-top1"]
    assert row["std"] > 0.07 and row["vs_best_baseline"] == pytest.approx(0.024)  # spread >> difference
    assert row["comparison"] == "paired" and row["paired_seeds"] == 5 and row["ci_low"] > 0 and row["significant"]
    text = invoke(table).output
    assert "+2.4 [+1.7, +3.1] *" in text and "95% confidence interval" in text


def test_noise_is_not_marked(tmp_path):
    noisy = [SCRATCH[k] + d for k, d in enumerate([0.03, -0.02, 0.01, -0.03, 0.02])]
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-top1": noisy})
    row = pd.read_csv(io.StringIO(invoke(table, "--format", "csv").output)).set_index("method").loc["contrastive-top1"]
    assert row["ci_low"] < 0 < row["ci_high"] and not row["significant"]


def test_identical_results_on_every_seed_are_said_in_words(tmp_path):
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-top1": SCRATCH})
    text = invoke(table).output
    assert "+0.0 (the same on every seed)" in text and "[+0.0, +0.0]" not in text
    assert "no clear difference" in text and "the same result on every one of 5 paired seed(s)" in text


def test_several_tables_read_as_one_with_their_names_and_aligned_columns(tmp_path):
    a = write_table(tmp_path / "digits.csv", {"scratch": SCRATCH, "contrastive-top1": PRETRAINED})
    b = tmp_path / "textures.csv"
    write_table(b, {"scratch": SCRATCH, "autoencoder-top1": SCRATCH}, data="textures")
    pd.read_csv(b).drop(columns=["arch"]).assign(extra=1).to_csv(b, index=False)  # differing columns
    result = invoke(a, b, "--by", "table,method", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {(r["table"], r["method"]) for r in json.loads(result.output)}
    assert rows == {(str(a), "scratch"), (str(a), "contrastive-top1"), (str(b), "scratch"), (str(b), "autoencoder-top1")}
    kept = invoke(a, b, "--where", "arch == 'small'", "--format", "csv").output
    assert set(pd.read_csv(io.StringIO(kept))["data"]) == {"digits"}  # textures rows have no arch


def test_where_sort_top_columns(tmp_path):
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-top1": PRETRAINED,
                                             "random-frozen": [v - 0.2 for v in SCRATCH]})
    result = invoke(table, "--where", "seed < 3", "--sort", "mean", "--descending", "--top", "2",
                    "--columns", "method,mean,n", "--format", "csv")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(io.StringIO(result.output))
    assert list(out.columns) == ["method", "mean", "n"] and out["method"].tolist() == ["contrastive-top1", "scratch"]
    assert (out["n"] == 3).all() and out["mean"].iloc[0] == pytest.approx(np.mean(PRETRAINED[:3]))


@pytest.mark.parametrize("args,message", [
    (["--where", "seed <"], "--where 'seed <'"),
    (["--where", "seed > 99"], "matching --where"),
    (["--sort", "nope"], "--sort: unknown column(s) ['nope']"),
    (["--columns", "method,nope"], "--columns: unknown column(s) ['nope']"),
    (["--top", "0"], "top must be >= 1"),
])
def test_bad_compare_options_are_one_line_errors(tmp_path, args, message):
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH})
    result = invoke(table, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.stderr


def test_html_report_is_one_self_contained_page(tmp_path):
    import base64
    from html.parser import HTMLParser

    from PIL import Image

    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-top1": PRETRAINED})
    page = tmp_path / "report.html"
    result = invoke(table, "--html", page)
    assert result.exit_code == 0, result.output

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.sources, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.sources += [v for k, v in attrs if k in ("src", "href")]

        def handle_data(self, data):
            self.text.append(data)

    parsed = Page()
    parsed.feed(page.read_text())
    text = " ".join(parsed.text)
    assert all(s.startswith("data:image/png;base64,") for s in parsed.sources) and len(parsed.sources) == 1
    plot = Image.open(io.BytesIO(base64.b64decode(parsed.sources[0].split(",", 1)[1])))
    assert plot.size[0] > 400 and plot.size[1] > 300
    assert parsed.tags.count("table") == 3  # the summary, the costs and the provenance
    assert "digits, 5 labels/class: pretraining paid" in text and "+2.4 [+1.7, +3.1] *" in text
    html_text = page.read_text()
    headline = "digits: pretraining pays at 5 labels/class (+2.4 [+1.7, +3.1], contrastive-top1)."
    assert f"<p class='headline'>{headline}</p>" in html_text  # the answer first
    assert "<li class='pays'>digits, 5 labels/class: pretraining paid" in html_text  # coloured by outcome
    import hashlib

    assert hashlib.sha256(table.read_bytes()).hexdigest() in html_text  # where the numbers come from
    assert f"transfer compare {table} --html {page} --verbose" in html_text and "code " in html_text
    assert "s/run" in text and "fine-tune" in text
    assert "CPU s/run" not in text  # a table of rows from before CPU time was kept: no empty column
    pd.read_csv(table).assign(cpu_seconds=1.5).to_csv(table, index=False)
    assert invoke(table, "--html", page).exit_code == 0
    assert "<th>CPU s/run</th>" in page.read_text() and "<td>1.5</td>" in page.read_text()


def test_verdict_says_where_pretraining_does_not_pay(tmp_path):
    worse = [v - 0.03 for v in SCRATCH]
    noisy = [SCRATCH[k] + d for k, d in enumerate([0.03, -0.02, 0.01, -0.03, 0.02])]
    write_table(tmp_path / "a.csv", {"scratch": SCRATCH, "contrastive-top1": worse}, budget="5")
    write_table(tmp_path / "b.csv", {"scratch": SCRATCH, "contrastive-top1": noisy}, budget="20")
    output = invoke(tmp_path / "a.csv", tmp_path / "b.csv").output
    assert "digits, 5 labels/class: pretraining did NOT pay (it lost)" in output
    assert "digits, 20 labels/class: no clear difference: pretraining did not pay" in output


def test_verdicts_follow_the_summary_grouping(tmp_path):
    small = write_table(tmp_path / "a.csv", {"scratch": SCRATCH, "contrastive-top1": PRETRAINED}, arch="small")
    vgg = write_table(tmp_path / "b.csv", {"scratch": SCRATCH, "contrastive-top1": [v - 0.03 for v in SCRATCH]},
                      arch="vgg")
    output = invoke(small, vgg, "--by", "data,arch,method,labels_per_class").output
    assert "digits, arch small, 5 labels/class: pretraining paid" in output
    assert "digits, arch vgg, 5 labels/class: pretraining did NOT pay (it lost)" in output


def test_the_best_pipeline_with_a_pretrained_encoder_is_judged_across_selections(tmp_path):
    """At a total budget the labels' selection is part of the pipeline: a baseline learner on
    labels chosen with a pretrained encoder uses pretraining; one on labels chosen on pixels
    does not. The sentence pairs the best of each side over the seeds."""
    def rows(method, how, encoder, accuracies):
        return [{"command": "fine-tune", "status": "ok", "data": "animals", "method": method, "labels": 10,
                 "selection": how.split()[0], "select_encoder": encoder, "labels_per_class": f"10 in all ({how})",
                 "seed": s, "test_accuracy": a, "seconds": 1.0} for s, a in enumerate(accuracies)]

    chosen = [v + 0.10 for v in SCRATCH]  # typiclust on the pretrained encoder, then scratch: +10 every seed
    table = pd.DataFrame(rows("scratch", "random", None, SCRATCH)
                         + rows("scratch", "typiclust on pixels", "pixels", [v + 0.02 for v in SCRATCH])
                         + rows("scratch", "typiclust on contrastive", "runs/pretrain-contrastive", chosen)
                         + rows("contrastive-finetuned", "random", None, [v + 0.01 for v in SCRATCH]))
    table.to_csv(tmp_path / "r.csv", index=False)
    output = invoke(tmp_path / "r.csv").output
    line = [l for l in output.splitlines() if "any selection" in l]
    assert line == ["animals, 10 labels in all, any selection: pretraining paid. Best pipeline with a pretrained "
                    "encoder (typiclust on contrastive, then scratch: 90.0) vs best without one (typiclust on "
                    "pixels, then scratch: 82.0): +8.0 points (95% CI +8.0 to +8.0, paired over 5 seed(s))."]
    cells = {l.split(":")[0]: l for l in output.splitlines() if "labels in all (" in l}
    # within one selection every learner has the same labels: the cell weighs the pretrained start
    assert cells["animals, 10 labels in all (random)"] == (
        "animals, 10 labels in all (random): the pretrained start paid. Best with a pretrained start, "
        "contrastive-finetuned, vs best without, scratch: +1.0 points (95% CI +1.0 to +1.0, paired over 5 seed(s)).")
    assert "animals, 10 labels in all (typiclust on contrastive)" not in cells  # no pretrained start there
    table2 = pd.concat([table, pd.DataFrame(rows("contrastive-finetuned", "typiclust on contrastive",
                                                 "runs/pretrain-contrastive", [v - 0.01 for v in chosen]))])
    table2.to_csv(tmp_path / "r2.csv", index=False)
    cells = {l.split(":")[0]: l for l in invoke(tmp_path / "r2.csv").output.splitlines() if "labels in all (" in l}
    assert cells["animals, 10 labels in all (typiclust on contrastive)"].startswith(
        "animals, 10 labels in all (typiclust on contrastive): the pretrained start did NOT pay (it lost). Best "
        "with a pretrained start, contrastive-finetuned, vs best without, scratch: -1.0 points")
    assert cells["animals, 10 labels in all (typiclust on contrastive)"].endswith(
        "; every learner here learned from the labels the contrastive encoder chose (the choice is weighed across "
        "selections).")  # and the pixels' choice has no such caveat
    assert "encoder chose" not in cells["animals, 10 labels in all (random)"]
    lucky = pd.DataFrame(rows("contrastive-finetuned", "typiclust on contrastive", "runs/pretrain-contrastive",
                              [0.99, 0.99]))  # a partly run cell: 2 seeds of 5, best mean
    pd.concat([table, lucky]).to_csv(tmp_path / "partial.csv", index=False)
    partial = [l for l in invoke(tmp_path / "partial.csv").output.splitlines() if "any selection" in l]
    assert partial == [line[0][:-1] + "; 1 pipeline(s) run on fewer seeds not ranked."]
    alone = table[table["select_encoder"].isna() & (table["method"] == "scratch")]
    alone.to_csv(tmp_path / "one_side.csv", index=False)  # no pipeline with pretraining: no sentence
    assert "any selection" not in invoke(tmp_path / "one_side.csv").output


def test_each_learners_best_choice_of_images_is_weighed_against_its_blind_draw(tmp_path):
    """Which images to label, learner by learner: at each total budget, every learner with a
    blind draw and a chosen set gets its best choice's paired difference from the blind draw;
    the stratified oracle is not a choice, and a learner with no blind draw is left out."""
    def rows(method, how, encoder, accuracies, labels=10):
        return [{"command": "fine-tune", "status": "ok", "data": "animals", "method": method, "labels": labels,
                 "selection": how.split()[0], "select_encoder": encoder,
                 "labels_per_class": f"{labels} in all ({how})", "seed": s, "test_accuracy": a, "seconds": 1.0}
                for s, a in enumerate(accuracies)]

    def shifted(d, base=SCRATCH):
        return [v + d for v in base]

    noisy = [SCRATCH[k] + d for k, d in enumerate([0.03, -0.02, 0.01, -0.03, 0.02])]
    table = pd.DataFrame(rows("scratch", "random", None, SCRATCH)
                         + rows("scratch", "typiclust on pixels", "pixels", shifted(0.02))
                         + rows("scratch", "typiclust on contrastive", "runs/pretrain-contrastive", shifted(0.10))
                         + rows("scratch", "stratified", None, shifted(0.15))  # the oracle: not a choice
                         + rows("scratch-semi", "random", None, shifted(0.05))
                         + rows("scratch-semi", "kcenter on contrastive", "runs/pretrain-contrastive", noisy)
                         + rows("contrastive-finetuned", "typiclust on contrastive", "runs/pretrain-contrastive",
                                shifted(0.12))  # no blind draw: not weighed
                         + rows("scratch", "random", None, SCRATCH, labels=20)
                         + rows("scratch", "typiclust on contrastive", "runs/pretrain-contrastive",
                                shifted(-0.04), labels=20)
                         + rows("scratch", "typiclust on pixels", "pixels", shifted(0.30)[:2], labels=20))
    table.to_csv(tmp_path / "r.csv", index=False)
    lines = [l for l in invoke(tmp_path / "r.csv").output.splitlines() if "which images" in l]
    assert lines == [
        "animals, 10 labels in all, which images: the best choice beat a blind draw for 1 of 2 learner(s). scratch "
        "on typiclust on contrastive, 90.0 against 80.0: +10.0 points (95% CI +10.0 to +10.0, paired over 5 "
        "seed(s)); scratch-semi on kcenter on contrastive, 80.2 against 85.0: -4.8 points (95% CI -8.0 to -1.6, "
        "paired over 5 seed(s)).",
        "animals, 20 labels in all, which images: the best choice beat a blind draw for 0 of 1 learner(s). scratch "
        "on typiclust on contrastive, 76.0 against 80.0: -4.0 points (95% CI -4.0 to -4.0, paired over 5 seed(s)); "
        "1 choice(s) run on fewer seeds not ranked.",  # the 2-seed pixels cell's +30 mean does not win
    ]
    d = np.array(noisy) - np.array(shifted(0.05))
    half = scipy_stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert f"{100 * (d.mean() - half):+.1f} to {100 * (d.mean() + half):+.1f}" == "-8.0 to -1.6"
    blind_only = table[table["selection"] == "random"]
    blind_only.to_csv(tmp_path / "blind.csv", index=False)  # no choice to weigh: no sentence
    assert "which images" not in invoke(tmp_path / "blind.csv").output


@pytest.mark.parametrize("baseline, pretrained", [("scratch-semi", "contrastive-semi"),
                                                   ("keras-mobilenetv3small-top1", "contrastive-finetuned")])
def test_a_stronger_baseline_than_scratch_takes_the_win_away(tmp_path, baseline, pretrained):
    """Semi-supervised methods are compared with the semi-supervised baseline, and every method
    with the baseline a Keras user runs first (an ImageNet backbone, keras-<name>-...): with one
    of them in the table the best baseline is it, and a win over scratch becomes a loss."""
    stronger = [a + 0.05 for a in SCRATCH]
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, baseline: stronger, pretrained: PRETRAINED})
    result = invoke(table, "--format", "csv")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(io.StringIO(result.output)).set_index("method")
    assert out.loc[pretrained, "vs_best_baseline"] == pytest.approx(0.024 - 0.05)
    assert "did NOT pay" in invoke(table).output


@pytest.mark.parametrize("where, refused", [
    ("@pd.io.common.os.system('touch {f}')", "'@' (a Python variable)"),
    ("seed.__class__.__init__.__globals__['sys'].modules['os'].system('touch {f}')", "not allowed"),
    ("__import__('os').system('touch {f}') == 0", "a call"),
    ("method.str.startswith('x')", "not allowed"),
    ("seed + 1 == 2", "arithmetic"),
    ("seed in method", "'in' with anything but a list of literals"),
    ("[open('{f}', 'w') for x in [1]] == 1", "not allowed"),
])
def test_where_cannot_run_code(tmp_path, where, refused):
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH})
    marker = tmp_path / "F"
    result = invoke(table, "--where", where.format(f=marker))
    assert result.exit_code == 2, result.output
    assert not marker.exists()  # nothing was evaluated
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --where") and refused in lines[0], lines


def test_where_language_compares_numbers_with_numbers(tmp_path):
    table = tmp_path / "r.csv"
    rows = [{"command": "fine-tune", "status": "ok", "data": "digits", "method": m, "labels_per_class": b,
             "seed": s, "test_accuracy": 0.5 + 0.01 * s, "arch": "small"}
            for m in ("scratch", "contrastive") for b in ("2", "10", "all") for s in range(3)]
    pd.DataFrame(rows).to_csv(table, index=False)

    def kept(where):
        result = invoke(table, "--where", where, "--by", "method,labels_per_class", "--format", "json")
        assert result.exit_code == 0, result.output
        return {(r["method"], str(r["labels_per_class"]), r["n"]) for r in json.loads(result.output)}

    assert kept("labels_per_class == 10") == {("scratch", "10", 3), ("contrastive", "10", 3)}
    assert kept("labels_per_class == '10'") == kept("labels_per_class == 10")
    assert kept("labels_per_class == 'all' and method != 'scratch'") == {("contrastive", "all", 3)}
    assert kept("labels_per_class < 5") == {("scratch", "2", 3), ("contrastive", "2", 3)}  # 'all' is no number
    assert kept("labels_per_class != 2 and not (method in ['scratch'])") == {("contrastive", "10", 3),
                                                                              ("contrastive", "all", 3)}
    assert kept("(seed >= 1) & (seed < 2) | ~(arch == 'small')") == kept("seed == 1")
    assert {n for *_, n in kept("0 < seed <= 2 and labels_per_class in [2, 'all']")} == {2}
    result = invoke(table, "--where", "nope == 1")
    assert result.exit_code == 2 and "unknown column 'nope'" in result.stderr


def test_csv_output_defuses_spreadsheet_formulas(tmp_path):
    table = write_table(tmp_path / "r.csv", {"=HYPERLINK(\"http://x\")": SCRATCH, "+1+cmd": SCRATCH,
                                             "@SUM(A1)": SCRATCH, "scratch": SCRATCH, "-bad": SCRATCH})
    result = invoke(table, "--format", "csv")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(io.StringIO(result.output))
    assert set(out["method"]) == {"'=HYPERLINK(\"http://x\")", "'+1+cmd", "'@SUM(A1)", "scratch", "'-bad"}
    assert (out["mean"] > 0).all() and out["vs_best_baseline"].notna().any()  # numbers as they were (negatives too)
    assert out["vs_scratch"].min() == pytest.approx(0.0)


def test_compare_says_how_the_evaluated_features_compare_with_pixels(tmp_path):
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-top1": PRETRAINED})
    df = pd.read_csv(table)
    evaluated = pd.DataFrame([
        {"command": "evaluate", "status": "ok", "data": "animals", "encoder": "runs/enc", "method": m, "readout": r,
         "knn_accuracy": k, "knn_error_vs_pixels": (1 - k) / (1 - 0.825), "nn1_4": n}
        for m, r, k, n in [("pixels", None, 0.825, 0.379), ("random", "avg", 0.841, 0.423),
                           ("kmeans-filters", "avg", 0.95, 0.7),  # a baseline: never the encoder's best
                           ("contrastive", "avg", 0.926, 0.603), ("contrastive", "multi", 0.925, 0.607)]])
    pd.concat([df, evaluated], ignore_index=True).to_csv(table, index=False)
    result = invoke(table)
    assert result.exit_code == 0, result.output
    assert ("features of runs/enc (contrastive, readout avg) on animals: 20-NN 92.6%, k-NN error vs pixels: 0.42x, "
            "1-NN from 4 labels/class 60.3% (+22.4 vs pixels)") in result.output


def test_stdout_holds_the_summary_alone_and_notes_go_to_stderr(tmp_path):
    """`compare --format csv > summary.csv` must hold a CSV: the files written and the rows
    skipped are said on stderr."""
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-finetuned": PRETRAINED})
    with open(table, "a") as f:
        f.write("fine-tune,ok,digits,scratch")  # a half-written last line (no newline): skipped, and said
    result = invoke(table, "--format", "csv", "--plot", tmp_path / "p.png", "--html", tmp_path / "p.html")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(io.StringIO(result.stdout))
    assert list(summary["method"]) == ["contrastive-finetuned", "scratch"] and len(summary.columns) > 5
    notes = result.stderr.splitlines()
    assert notes[0].startswith("warning: ") and "half-written last line" in notes[0]
    assert notes[1:] == [f"wrote {tmp_path / 'p.png'}", f"wrote {tmp_path / 'p.html'}"]


def test_runs_that_differ_in_a_setting_are_never_pooled(tmp_path):
    """Two experiments that ran the same cell with another number of steps are shown as two
    methods, each compared with the baselines (never 10 runs of 5 seeds averaged as one); a line
    on stdout says what was split and why; `seeds` counts distinct seeds; one run repeated with
    the same settings counts once, averaged per seed, and is said on stderr."""
    first = pd.read_csv(write_table(tmp_path / "a.csv", {"scratch": SCRATCH, "contrastive-finetuned": PRETRAINED}))
    second = first[first["method"] == "contrastive-finetuned"].assign(test_accuracy=0.5)
    table = pd.concat([first.assign(experiment="grid", steps=2000), second.assign(experiment="grid_steps", steps=1000)])
    table.to_csv(tmp_path / "r.csv", index=False)
    result = invoke(tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert ("data digits, method contrastive-finetuned, labels_per_class 5: 10 runs over 5 seeds differ in steps: "
            "shown apart (steps=1000, steps=2000), never averaged") in result.stdout
    assert "warning" not in result.stderr
    split = pd.read_csv(io.StringIO(invoke(tmp_path / "r.csv", "--format", "csv").stdout))
    assert sorted(split["method"]) == ["contrastive-finetuned [steps=1000]", "contrastive-finetuned [steps=2000]",
                                       "scratch"]
    assert (split["n"] == 5).all()
    ours = split.set_index("method")
    assert ours.loc["contrastive-finetuned [steps=2000]", "mean"] == pytest.approx(np.mean(PRETRAINED))
    assert ours.loc["contrastive-finetuned [steps=1000]", "mean"] == pytest.approx(0.5)
    assert ours.loc["contrastive-finetuned [steps=2000]", "vs_best_baseline"] == pytest.approx(
        np.mean(PRETRAINED) - np.mean(SCRATCH))  # each compared with the baselines
    assert invoke(tmp_path / "r.csv", "--html", tmp_path / "r.html").exit_code == 0
    assert "shown apart (steps=1000, steps=2000)" in (tmp_path / "r.html").read_text()  # the page says it too
    pd.concat([first, first.iloc[:1].assign(test_accuracy=0.0)]).to_csv(tmp_path / "again.csv", index=False)
    again = invoke(tmp_path / "again.csv")
    assert "scratch, labels_per_class 5: 6 runs over 5 seed(s)" in again.stderr
    assert "the same settings ran again" in again.stderr
    counted = pd.read_csv(io.StringIO(invoke(tmp_path / "again.csv", "--format", "csv").stdout)).set_index("method")
    assert counted.loc["scratch", "n"] == 5  # distinct seeds, not runs
    repeated = [SCRATCH[0] / 2, *SCRATCH[1:]]  # seed 0 run twice (its first value and 0): averaged, then counted once
    assert counted.loc["scratch", "mean"] == pytest.approx(np.mean(repeated))


def test_the_best_of_several_pretrained_methods_is_judged_with_an_interval_widened_for_the_choice(tmp_path):
    """Three pretrained methods against scratch: the verdict picks the best by its mean, so its
    interval is the Bonferroni one for 3 (t at 1 - 0.05 / 6 with 4 degrees of freedom) and the
    verdict follows it: a gain whose plain 95% interval excludes zero but whose widened one does
    not is "no clear difference". The table's own row keeps its plain interval."""
    gains = np.array([0.050, 0.010, 0.030, 0.045, 0.005])  # the best method's paired differences
    chance = {f"m{i}-finetuned": [a + 0.001 * i for a in SCRATCH] for i in (1, 2)}  # two others, no better
    write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-finetuned": list(np.array(SCRATCH) + gains),
                                     **{k.replace("m1", "autoencoder").replace("m2", "vicreg"): v
                                        for k, v in chance.items()}})
    result = invoke(tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    half = scipy_stats.t.ppf(0.975, 4) * gains.std(ddof=1) / math.sqrt(5)
    wide = scipy_stats.t.ppf(1 - 0.05 / 3 / 2, 4) * gains.std(ddof=1) / math.sqrt(5)
    assert gains.mean() - half > 0 > gains.mean() - wide  # the case this test is about
    verdict = next(line for line in result.output.splitlines() if line.startswith("digits, 5 labels/class"))
    low, high = 100 * (gains.mean() - wide), 100 * (gains.mean() + wide)
    assert verdict.startswith("digits, 5 labels/class: no clear difference: pretraining did not pay.")
    assert (f"(95% CI {stats.bound(low / 100, 100)} to {high:+.1f}, widened for the best of 3 (Bonferroni), "
            "paired over 5 seed(s))") in verdict
    row = pd.read_csv(io.StringIO(invoke(tmp_path / "r.csv", "--format", "csv").stdout)).set_index("method")
    assert row.loc["contrastive-finetuned", "ci_low"] == pytest.approx(gains.mean() - half)
    assert stats.bound(-0.0004, 100) == "-0.04" and stats.bound(0.031, 100) == "+3.1"


def test_the_plot_keeps_budgets_per_class_and_in_all_on_their_own_axes_and_selections_apart():
    """Per-class budgets on a "per class" axis, totals on an "in all" axis; at a total budget a
    choice and a blind draw are two lines, never one averaged point."""
    budgets = {"2": {"labels_per_class": "2"}, "5": {"labels_per_class": "5"},  # the budget's columns
               "10 random": {"labels": 10, "selection": "random"}, "20 random": {"labels": 20, "selection": "random"},
               "10 typiclust": {"labels": 10, "selection": "typiclust", "select_features": "pixels"}}
    accuracy = {"2": 0.5, "5": 0.6, "10 random": 0.3, "10 typiclust": 0.7, "20 random": 0.5}
    rows = [{"data": "d", "method": m, **budgets[b], "seed": s, "test_accuracy": accuracy[b] + 0.01 * s}
            for m in ("scratch", "contrastive-finetuned") for s in (0, 1) for b in budgets]
    panels = comparison.curves(pd.DataFrame(rows), "test_accuracy")
    assert [(p["title"], p["xlabel"]) for p in panels] == [("d per class", "labeled images per class"),
                                                           ("d in all", "labeled images in all")]
    assert sorted(panels[0]["lines"]) == ["contrastive-finetuned", "scratch"]
    assert [t for t, _ in panels[0]["ticks"]] == [2, 5]
    totals = panels[1]["lines"]
    assert sorted(totals) == ["contrastive-finetuned on random", "contrastive-finetuned on typiclust on pixels",
                              "scratch on random", "scratch on typiclust on pixels"]
    blind = totals["scratch on random"][1]
    assert blind.index.tolist() == [10, 20] and blind.loc[10, "mean"] == pytest.approx(0.305)  # not 0.5: no averaging
    assert totals["scratch on random"][0] and not totals["contrastive-finetuned on random"][0]  # baselines dashed


def test_the_headline_comes_first_and_the_sentences_behind_verbose(tmp_path):
    """One sentence per data set before the table: where pretraining pays (the budget, the
    difference with its interval, the route), where it is not clear, where it loses; the
    per-budget sentences only with --verbose."""
    write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-finetuned": PRETRAINED})
    write_table(tmp_path / "s.csv", {"scratch": SCRATCH, "contrastive-finetuned": [v - 0.03 for v in SCRATCH]},
                budget="2")
    plain = invoke(tmp_path / "r.csv", tmp_path / "s.csv", verbose=False)
    assert plain.exit_code == 0, plain.output
    lines = plain.stdout.splitlines()
    assert lines[0] == ("digits: pretraining pays at 5 labels/class (+2.4 [+1.7, +3.1], contrastive-finetuned); "
                        "it loses at 2 labels/class.")
    assert lines[1].split()[:2] == ["data", "method"]  # then the table
    assert not any(line.startswith("digits, 5 labels/class:") for line in lines)
    assert "(2 verdict sentences, one per budget and selection: --verbose)" in lines  # (1: "sentence")
    verbose = invoke(tmp_path / "r.csv", tmp_path / "s.csv").stdout
    assert "digits, 5 labels/class: pretraining paid." in verbose and "digits, 2 labels/class: pretraining did NOT" in verbose



def test_the_cost_lines_name_the_pretrainings_of_the_fine_tunes_compared(tmp_path):
    """A table may hold several experiments' encoders: the cost lines follow --where to the
    encoders the compared fine-tunes learned from or chose their labels with."""
    table = write_table(tmp_path / "r.csv", {"scratch": SCRATCH, "contrastive-finetuned": PRETRAINED})
    df = pd.read_csv(table).assign(experiment="a", encoder=None, select_encoder=None)
    df.loc[df["method"] == "contrastive-finetuned", "encoder"] = "runs/a/pretrain-contrastive"
    other = df.assign(experiment="b", encoder=df["encoder"].str.replace("/a/", "/b/"))
    other.loc[other["method"] == "scratch", "select_encoder"] = "runs/b/pretrain-kmeans"
    pre = pd.DataFrame([{"command": "pretrain", "status": "ok", "data": "digits", "objective": o,
                         "run_dir": f"runs/{e}/pretrain-{o}", "seconds": s, "images_per_second": ips}
                        for e, o, s, ips in [("a", "contrastive", 120.0, 3000.0), ("b", "contrastive", 300.0, 1500.0),
                                             ("b", "kmeans", 9.0, 0.0)]])
    pd.concat([df, other, pre], ignore_index=True).to_csv(table, index=False)
    costs = [line for line in invoke(table, "--where", "experiment == 'a'").output.splitlines()
             if line.startswith("pretraining ")]
    assert costs == ["pretraining contrastive on digits: 120s (3000 images/s), reused by every fine-tune of its encoder"]
    costs = [line for line in invoke(table, "--where", "experiment == 'b'").output.splitlines()
             if line.startswith("pretraining ")]
    assert costs == ["pretraining contrastive on digits: 300s (1500 images/s), reused by every fine-tune of its encoder",
                     "pretraining kmeans on digits: 9s, reused by every fine-tune of its encoder"]


def test_a_directory_pretrained_again_counts_the_pretraining_each_fine_tune_found_there(tmp_path):
    """A grid re-run into the same runs directory pretrains the same path again: the earlier
    rows' cost line is the earlier pretraining's, the re-run's the new one's."""
    table = write_table(tmp_path / "r.csv", {"contrastive-finetuned": PRETRAINED})
    df = pd.read_csv(table).assign(encoder="runs/d/pretrain-contrastive")
    first = df.assign(experiment="before", timestamp="2026-12-01T10:00:00+00:00")
    again = df.assign(experiment="now", timestamp="2026-12-07T10:00:00+00:00")
    pre = pd.DataFrame([{"command": "pretrain", "status": "ok", "data": "digits", "objective": "contrastive",
                         "run_dir": "runs/d/pretrain-contrastive", "seconds": s, "images_per_second": 1000.0,
                         "timestamp": t} for s, t in [(300.0, "2026-12-01T09:00:00+00:00"),
                                                      (126.0, "2026-12-07T09:00:00+00:00")]])
    pd.concat([first, again, pre], ignore_index=True).to_csv(table, index=False)
    for name, seconds in (("before", "300s"), ("now", "126s")):
        costs = [line for line in invoke(table, "--where", f"experiment == '{name}'").output.splitlines()
                 if line.startswith("pretraining ")]
        assert costs == [f"pretraining contrastive on digits: {seconds} (1000 images/s), reused by every fine-tune "
                         "of its encoder"], (name, costs)
