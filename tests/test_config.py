"""Config sections: a group of options held as a config of its own (cfg.fixmatch.threshold),
read by flat names wherever options are read (command line, --config files, experiment files)."""

from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from transfer import config
from transfer.config import BudgetConfig, ClassifierConfig, FineTuneConfig, FixMatchConfig, make
from transfer.errors import TransferError


def test_make_gathers_a_sections_options_and_flat_inverts_it():
    cfg = make(FineTuneConfig, data="digits", threshold=0.8, steps=100, seed=3)
    assert cfg.fixmatch == FixMatchConfig(threshold=0.8, steps=100) and cfg.seed == 3
    assert make(FineTuneConfig, **config.flat(cfg)) == cfg
    assert "fixmatch" not in config.flat(cfg) and config.flat(cfg)["mu"] == FixMatchConfig().mu
    given = make(FineTuneConfig, data="digits", fixmatch=FixMatchConfig(mu=3), steps=50)  # whole, then by name
    assert (given.fixmatch.mu, given.fixmatch.steps) == (3, 50)
    assert make(FineTuneConfig, data="digits") == FineTuneConfig(data="digits")  # every default is the field's
    cfg = make(FineTuneConfig, data="digits", labels=6, selection="probcover", purity=0.6, head=(64,), dropout=0.1)
    assert cfg.budget == BudgetConfig(labels=6, selection="probcover", purity=0.6)
    assert cfg.classifier == ClassifierConfig(head=(64,), dropout=0.1)
    assert set(config.sections(FineTuneConfig)) == {"budget", "classifier", "fixmatch"}
    from pipelines.common import config_dict  # config.json names the options as the command line does

    saved = config_dict(cfg)
    assert saved["labels"] == 6 and saved["head"] == (64,) and not {"budget", "classifier", "fixmatch"} & set(saved)


def test_a_section_checks_its_own_values_and_unknown_names_are_refused():
    with pytest.raises(TransferError, match=r"threshold must be in \(0, 1\]"):
        make(FineTuneConfig, data="digits", threshold=1.5)
    with pytest.raises(TransferError, match="teacher must be one of"):
        FixMatchConfig(teacher="oracle")
    with pytest.raises(TransferError, match="give --labels N"):
        make(FineTuneConfig, data="digits", selection="kcenter")
    with pytest.raises(TransferError, match="projector reads a pretrained encoder's projection head"):
        make(FineTuneConfig, data="digits", readout="projector")  # a section's value checked against the config's
    with pytest.raises(TypeError):
        make(FineTuneConfig, data="digits", thresold=0.9)


def test_a_section_may_not_repeat_an_option_name():
    @dataclass(frozen=True)
    class Inner:
        seed: int = config.option(0, "a seed")

    @dataclass(frozen=True)
    class Outer:
        seed: int = config.option(0, "a seed")
        inner: Inner = config.section(Inner)

    with pytest.raises(TypeError, match="repeats the option name seed"):
        config.settable(Outer)


def test_config_files_read_a_section_as_a_table_or_at_the_top(tmp_path):
    path = tmp_path / "ft.toml"
    path.write_text('mu = 3\nseed = 2\n[fixmatch]\nthreshold = 0.7\nsemi-learning-rate = 0.01\n')
    assert config.load_toml(path, FineTuneConfig) == {"mu": 3, "seed": 2, "threshold": 0.7,
                                                      "semi_learning_rate": 0.01}
    path.write_text('[fixmatch]\nthreshhold = 0.7\n')
    with pytest.raises(TransferError, match="unknown option 'threshhold'"):
        config.load_toml(path, FineTuneConfig)


def test_the_command_line_and_an_experiment_fill_the_section(monkeypatch, tmp_path):
    from cli import main
    from pipelines import experiment, fine_tune

    seen = []
    monkeypatch.setattr(fine_tune, "run", lambda cfg, log=None: seen.append(cfg))
    toml = tmp_path / "ft.toml"
    toml.write_text('[fixmatch]\nmu = 2\n')
    result = CliRunner().invoke(main, ["fine-tune", "--data", "digits", "--threshold", "0.8", "--no-align",
                                       "--config", str(toml)])
    assert result.exit_code == 0, result.output
    assert seen[0].fixmatch == FixMatchConfig(mu=2, threshold=0.8, align=False)
    spec = {"fine_tune": {"seed": 1, "fixmatch": {"steps": 30}, "teacher": "inference"}}
    section = experiment._section(spec, "fine_tune", FineTuneConfig, tmp_path / "e.toml")
    assert make(FineTuneConfig, data="digits", **section).fixmatch == FixMatchConfig(steps=30, teacher="inference")
    with pytest.raises(TransferError, match="steps must be a whole number"):
        experiment._section({"fine_tune": {"fixmatch": {"steps": "many"}}}, "fine_tune", FineTuneConfig, "e.toml")
