"""Each misconfiguration fails before training with its documented one-line error."""

from pathlib import Path

import pytest

from conftest import FIXTURES, run_script
from tunelab.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.train_file=/nonexistent/train.tsv"], "data file not found: /nonexistent/train.tsv"),
        (["data.text_column=review"], "data.text_column='review' is not a column of"),
        (["data.batch_size=5000"], "data.batch_size=5000 is larger than the"),
        (["model.name_or_path=/nonexistent/model", "model.tokenizer=/nonexistent/model"], "not found at '/nonexistent/model'"),
        (["trainer.accelerator=gpu", "trainer.devices=8"], "trainer.devices=8 but 0 GPU(s) are available"),
        (["ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt does not exist"),
        (["model.freeze_layers=9"], "model.freeze_layers=9 but the model has 2 layers"),
        (["trainer.devices=2", "on_nan=skip"], "on_nan=skip needs one process, not 2; use on_nan=stop"),
        (["trainer.accelerator=cpu", "trainer.num_nodes=2"],  # rank 0 waited for the other node forever
         "trainer.num_nodes=2 needs the other nodes started with it: use hydra/launcher=slurm"),
        (["model.compile=true", "model.compile_backend=cudagraphs", "model.compile_dynamic=true"],
         "model.compile_backend=cudagraphs replays the graph recorded for the first batch shape"),
        (["+callbacks.probe._target_=tunelab.callbacks.Probe"],
         "callbacks.probe._target_=tunelab.callbacks.Probe cannot be imported (module 'tunelab.callbacks' has no "
         "attribute 'Probe'): fix the path, or drop callbacks.probe."),
        (["model.pooling=mean", "data=conll2003", "loss=token_cross_entropy"],
         "model.pooling=mean averages a text into one vector for a sequence head; data.task=token_classification"),
        # a ??? the chosen option leaves (OmegaConf's MissingMandatoryValue traceback otherwise)
        (["data=csv"], "data.train_file is not set (data=csv needs it): pass data.train_file=<value>."),
        # model=hf inherits no path: it must not train MiniLM silently
        (["model=hf"], "model.name_or_path is not set (model=hf needs it): pass model.name_or_path=<value>."),
        (["data.test_file=null", "data.val_fraction=0.5", "data.test_fraction=0.5"],
         "data.val_fraction + data.test_fraction = 1 leaves no training rows; keep the sum below 1."),
        ([f"ckpt_path={FIXTURES}"], f"ckpt_path={FIXTURES} is a directory; pass the path of a .ckpt file"),
        (["callbacks=early_stopping", "trainer.limit_val_batches=0"],
         "callbacks.early_stopping stops on val/acc, but trainer.limit_val_batches=0 runs no validation"),
    ],
)
def test_misconfiguration_raises_documented_error(run_cfg, overrides, message) -> None:
    if "gpu" in overrides[0]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("machine has GPUs")
    with pytest.raises(ConfigError) as err:
        run_cfg(*overrides, "trainer=debug")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_rows_name_file_and_line(run_cfg, tmp_path) -> None:
    bad_label = write(tmp_path / "bad_label.tsv", "sentence\tlabel\ngood movie\t1\nbad movie\tmaybe\n")
    with pytest.raises(ConfigError, match=r"bad_label.tsv:3: label 'maybe' is not in the label set"):
        run_cfg(f"data.train_file={bad_label}", "data.batch_size=1", "trainer=debug")
    bad_target = write(tmp_path / "bad_target.tsv", "sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\thigh\n")
    with pytest.raises(ConfigError, match=r"bad_target.tsv:3: regression target 'high' is not a number"):
        run_cfg("data=stsb", "loss=mse", f"data.train_file={bad_target}", "data.batch_size=1", "trainer=debug")
    ragged = write(tmp_path / "ragged.tsv", "sentence\tlabel\ngood\t1\textra\n")
    with pytest.raises(ConfigError, match=r"ragged.tsv:2: 3 columns where the header has 2"):
        run_cfg(f"data.train_file={ragged}", "trainer=debug")


def test_cli_prints_one_line_and_exits_2(tmp_path) -> None:
    """The terminal shows the error once (stderr), before anything else; the run's log file keeps it."""
    proc = run_script("train.py", "loss=cross_entropy", "data=stsb", f"paths.data_dir={FIXTURES}",
                      f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    message = "loss=cross_entropy needs a classification task; got data=stsb (regression). Use loss=mse."
    assert proc.stderr.strip().splitlines() == [f"error: {message}"], proc.stderr[-2000:]
    assert message not in proc.stdout
    assert message in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("argv,message", [
    (["loss=mse", "loss.label_smoothing=0.1"],  # the default loss has the key; the chosen one does not
     "unknown config key 'loss.label_smoothing': loss=mse has no label_smoothing (its keys: _target_, scale_k, "
     "scale_m); the loss options with label_smoothing: cross_entropy, cross_entropy_smoothed, "
     "next_token_cross_entropy, token_cross_entropy."),
    (["optimizer.foreach=false"],  # a keyword of torch.optim.AdamW that no option's yaml lists
     "unknown config key 'optimizer.foreach': optimizer=adamw does not set foreach, which torch.optim.AdamW takes: "
     "add it with +optimizer.foreach=<value>."),
    (["scheduler=none", "scheduler.warmup_steps=10"],  # an option without keys
     "unknown config key 'scheduler.warmup_steps': scheduler=none takes no settings; the scheduler options with "
     "warmup_steps: constant_with_warmup, cosine, linear."),
    (["hparams_search=optuna_random", "hydra.sweeper.params.optimizer.lr=interval(1e-5, 1e-3)"],  # not nested
     "unknown config key 'hydra.sweeper.params.optimizer.lr': search optimizer.lr with a plain override of a search "
     "expression, 'optimizer.lr=interval(<low>, <high>)' or 'optimizer.lr=choice(<a>, <b>)' (with "
     "hparams_search=...)."),
    (["peft.r=4"],  # peft=none; lora's r sits under `peft:` of a _global_ file, adalora inherits it from lora
     "unknown config key 'peft.r': peft=none has no r (its keys: name, save_adapter, merge_on_save, modules_to_save); "
     "the peft options with r: adalora, lora."),
    (["callbacks.early_stopping.patience=3"],  # callbacks=default has no early stopping to set
     "unknown config key 'callbacks.early_stopping.patience': callbacks=default has no early_stopping; the callbacks "
     "options with early_stopping: early_stopping."),
    (["debug=quick", "callbacks.progress_bar.metrics_every=0"],  # there, but switched off
     "unknown config key 'callbacks.progress_bar.metrics_every': callbacks.progress_bar is null in this config (an "
     "option or the command line switched it off), so it has no settings: drop callbacks.progress_bar.metrics_every."),
    (["optimzer.lr=0.1"], "unknown config key 'optimzer.lr': did you mean optimizer.lr? (to add a new key write "
                          "+optimzer.lr=...)"),
    (["optimizer=sgd", "optimizer.momentun=0.9"],
     "unknown config key 'optimizer.momentun': did you mean optimizer.momentum? (to add a new key write "
     "+optimizer.momentun=...)"),
    (["-m", "loss=cross_entropy,focal", "loss.gamma=1,2"],  # focal has gamma: not the `+` the others get
     "unknown config key 'loss.gamma': loss=cross_entropy has no gamma (its keys: _target_, label_smoothing, "
     "class_weights), and a sweep crosses every loss.gamma value with every loss option: sweep loss.gamma in a "
     "sweep of its own, with the loss option that has it."),
])
def test_unknown_keys_are_explained_from_the_config_the_user_composed(argv, message) -> None:
    from hydra.errors import ConfigCompositionException

    from tunelab.cli import explain_override_error

    key = argv[-1].split("=")[0]
    err = ConfigCompositionException(f"Could not override '{key}'.\nTo append to your config use +{argv[-1]}")
    assert explain_override_error(err, "train", argv) == message


def test_an_unquoted_list_for_the_sweeper_names_the_quotes() -> None:
    from hydra.errors import ConfigCompositionException

    from tunelab.cli import explain_override_error

    err = ConfigCompositionException("Sweeping over Hydra's configuration is not supported : "
                                     "'hydra.sweeper.params.loss=cross_entropy,focal'")
    assert explain_override_error(err, "train", []) == (
        "hydra.sweeper.params.loss=cross_entropy,focal needs quotes around the values: write "
        "\"hydra.sweeper.params.loss='cross_entropy,focal'\".")


@pytest.mark.parametrize("seed", ["seed=0,1", "seed=choice(0,1)", "seed=range(3)", "+hydra.sweeper.params.seed='0,1'"])
def test_a_seed_list_under_an_optuna_search_is_refused(tmp_path, seed) -> None:
    """The sweeper would search the seed (and pick the luckiest) instead of averaging trials over seeds; the
    sweeper's params (an hparams_search file) are checked too, not only the command line."""
    proc = run_script("train.py", "hparams_search=optuna_random", seed, f"hydra.sweep.dir={tmp_path}")
    seed = seed.removeprefix("+hydra.sweeper.params.").replace("'", "")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {seed} with hparams_search makes the seed a searched parameter (the study would pick the luckiest "
        "seed); search with one seed, then run the best config over seeds: python train.py -m <best params> "
        "seed=0,1,2."]
    assert not list(tmp_path.iterdir())  # refused before Hydra started the study


def test_a_nested_group_lists_its_options_and_plugins() -> None:
    from hydra.errors import MissingConfigException

    from tunelab.cli import explain_override_error

    err = MissingConfigException("In 'hydra/config': Could not find 'hydra/launcher/foo'", "hydra/launcher/foo")
    assert explain_override_error(err, "train", []) == (
        "hydra/launcher=foo is not an option; choose one of: basic, slurm, submitit_local, submitit_slurm")


def test_print_config_of_a_sweep_is_one_line() -> None:
    proc = run_script("train.py", "-m", "seed=1", "--cfg", "job")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified: --cfg and "
        "--info print one run's config, so drop -m."]


def test_sweep_values_without_multirun_name_the_fix() -> None:
    proc = run_script("train.py", "optimizer.lr=1e-4,1e-3")
    assert proc.returncode == 2
    assert ("error: optimizer.lr=1e-4,1e-3 lists several values: add -m to sweep over them "
            "(python train.py -m ... optimizer.lr=1e-4,1e-3), or write optimizer.lr=[1e-4,1e-3] for a list.") in proc.stderr
    assert "Traceback" not in proc.stderr


MULTILABEL = ["data=tsv", "data.task=multilabel", "data.train_file=x.tsv"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss=cross_entropy", "data=stsb"], "loss=cross_entropy needs a classification task; got data=stsb (regression). Use loss=mse."),
        (["loss=token_cross_entropy", "data=stsb"],
         "loss=token_cross_entropy needs a token_classification task; got data=stsb (regression). Use loss=mse."),
        (["loss=focal", "data=stsb"],
         "loss=focal needs a classification, multilabel or token_classification task; got data=stsb (regression). "
         "Use loss=mse."),
        (["loss=bce", "data=sst2"], "loss=bce needs a multilabel task; got data=sst2 (classification). Use loss=cross_entropy."),
        (["loss=cross_entropy", *MULTILABEL],
         "loss=cross_entropy needs a classification task; got data=tsv (multilabel). Use loss=bce."),
        (["loss=mse", *MULTILABEL],
         "loss=mse needs a classification or regression task; got data=tsv (multilabel). Use loss=bce."),
        (["loss=next_token_cross_entropy", "data=sst2"],
         "loss=next_token_cross_entropy needs a causal_lm task; got data=sst2 (classification). Use loss=cross_entropy."),
        (["loss=mse", "data=wnut17"],
         "loss=mse needs a classification or regression task; got data=wnut17 (token_classification). "
         "Use loss=token_cross_entropy."),
        (["loss=cross_entropy", "data=conll2003"],
         "loss=cross_entropy needs a classification task; got data=conll2003 (token_classification). "
         "Use loss=token_cross_entropy."),
        (["loss=token_cross_entropy", "data=sst2"],
         "loss=token_cross_entropy needs a token_classification task; got data=sst2 (classification). "
         "Use loss=cross_entropy."),
        (["loss=next_token_cross_entropy", "data=wnut17"],
         "loss=next_token_cross_entropy needs a causal_lm task; got data=wnut17 (token_classification). "
         "Use loss=token_cross_entropy."),
        (["loss=cross_entropy", "data=tiny_shakespeare", "model=gpt2_tiny"],
         "loss=cross_entropy needs a classification task; got data=tiny_shakespeare (causal_lm). "
         "Use loss=next_token_cross_entropy."),
        (["loss=mse", "data=text", "data.train_file=x.txt"],
         "loss=mse needs a classification or regression task; got data=text (causal_lm). "
         "Use loss=next_token_cross_entropy."),
        (["loss=bce", "data=tiny_shakespeare", "model=gpt2_tiny"],
         "loss=bce needs a multilabel task; got data=tiny_shakespeare (causal_lm). Use loss=next_token_cross_entropy."),
    ],
)
def test_loss_that_does_not_fit_the_task_is_exactly_one_line(run_cfg, overrides, message) -> None:
    """Every task's mismatched losses, refused before anything loads, with the loss that fits."""
    with pytest.raises(ConfigError) as err:
        run_cfg(*overrides, "trainer=debug")
    assert str(err.value) == message


def test_a_run_that_ends_before_its_first_validation_says_so_and_early_stopping_lets_it_finish(run_cfg,
                                                                                               caplog) -> None:
    """max_steps below an epoch with validation at epoch ends: no val/ metric ever exists. Early stopping
    (strict, Lightning's default) raised a RuntimeError at the epoch's end; the run now finishes and warns."""
    with caplog.at_level("WARNING", logger="tunelab.module"):
        metrics, _ = run_cfg("callbacks=early_stopping", "data.train_limit=64", "data.batch_size=8",
                             "trainer.max_steps=3", "trainer.max_epochs=1", "trainer.limit_val_batches=2")
    assert "test/acc" in metrics and "val/acc" not in metrics
    assert any(r.message.startswith("trainer.max_steps=3 ends training before the first validation (after 8 batches)")
               for r in caplog.records), [r.message for r in caplog.records]
