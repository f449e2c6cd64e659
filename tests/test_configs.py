"""The Hydra configs compose as the command line composes them, from any directory.

Every experiment in conf/experiment composes and names importable classes; the keys
scripts rely on exist; paths are absolute whatever the current directory; mistakes
get Hydra's or the constructor's message.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf, open_dict

from tests.helpers.training import CONF_DIR, PROJECT_ROOT, compose_train, process_state_restored

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    with process_state_restored():
        yield


def test_the_three_experiments_exist() -> None:
    assert {"movielens", "movielens_ranking", "imdb"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_to_importable_classes(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train([f"+experiment={experiment}"], run_dir=tmp_path)
    for group in ("data", "model", "optimizer"):
        target = cfg[group]._target_
        assert hydra.utils.get_class(target), target
    assert cfg.trainer.epochs >= 1
    assert cfg.optimized_metric.startswith(("test/", "val/"))
    assert cfg.task_name != "train"  # each experiment names its run folders
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    OmegaConf.to_container(job, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize(
    ("experiment", "model", "data", "metric"),
    [
        ("movielens", "RetrievalModel", "MovieLensDataModule", "test/recall@100"),
        ("movielens_ranking", "RankingModel", "MovieLensDataModule", "test/rmse"),
        ("movielens_autorec", "AutoRecModel", "MovieLensDataModule", "test/rmse"),
        ("imdb", "TextClassifier", "ImdbDataModule", "test/accuracy"),
    ],
)
def test_experiment_builds_what_it_says(
    experiment: str, model: str, data: str, metric: str
) -> None:
    cfg = compose_train([f"+experiment={experiment}"])
    assert cfg.model._target_ == f"recsys.models.{model}"
    assert cfg.data._target_ == f"recsys.data.{data}"
    assert cfg.optimizer._target_ == "recsys.optimizers.SparseAdam"
    assert cfg.optimized_metric == metric


@pytest.mark.parametrize("experiment", ["movielens", "movielens_ranking"])
def test_names_scripts_rely_on(experiment: str) -> None:
    cfg = compose_train(
        [
            f"+experiment={experiment}",
            "data.variant=1m",
            "data.path=/somewhere/ml-1m.zip",
            "data.seed=7",
            "data.test_fraction=0.1",
            "trainer.epochs=5",
        ]
    )
    assert cfg.data.variant == "1m"
    assert cfg.data.path == "/somewhere/ml-1m.zip"
    assert cfg.data.seed == 7
    assert cfg.data.test_fraction == 0.1
    assert cfg.trainer.epochs == 5
    datamodule = hydra.utils.instantiate(cfg.data)  # the keys reach the constructor
    assert (datamodule.variant, datamodule.seed, datamodule.test_fraction) == ("1m", 7, 0.1)


def test_movielens_follows_the_design_protocol() -> None:
    data = compose_train(["+experiment=movielens"]).data
    assert (data.variant, data.split, data.test_fraction, data.val_fraction, data.seed) == (
        "100k",
        "random",
        0.2,
        0.0,
        42,
    )


@pytest.mark.parametrize(
    ("variant", "want"),
    [
        ("100k", (512, 5, 64, 0.08, True, True, True, 1)),
        ("latest-small", (512, 5, 64, 0.08, True, True, True, 1)),
        ("1m", (4096, 8, 64, 0.05, False, False, False, 3)),
        ("25m", (4096, 8, 64, 0.05, False, False, False, 3)),
    ],
)
def test_ranking_experiment_picks_the_recipe_of_the_variant(variant: str, want: tuple) -> None:
    cfg = compose_train(["+experiment=movielens_ranking", f"data.variant={variant}"])
    model = cfg.model
    got = (cfg.data.batch_size, cfg.trainer.epochs, model.embedding_dim, model.factors_l2)
    flags = (model.use_history, model.use_rated_history, model.use_item_rated_history)
    assert (*got, *flags, model.ensemble_size) == want


@pytest.mark.parametrize("variant", ["100k", "1m"])
def test_ranking_recipe_learning_rate_builds_the_optimizer(variant: str) -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["+experiment=movielens_ranking", f"data.variant={variant}"])
    optimizer = instantiate(cfg.optimizer)
    rate = optimizer.learning_rate
    if variant == "100k":  # cosine decay from 0.008 over 942 steps
        schedule = optimizer._learning_rate
        assert type(schedule).__name__ == "CosineDecay"
        assert float(schedule(0)) == pytest.approx(0.008)
        assert float(schedule(471)) == pytest.approx(0.004, rel=1e-5)
        assert float(schedule(942)) == pytest.approx(0.0, abs=1e-9)
    else:
        assert float(rate) == pytest.approx(0.003)
    # The command line still wins with a plain number.
    cfg = compose_train(
        ["+experiment=movielens_ranking", f"data.variant={variant}", "optimizer.learning_rate=0.01"]
    )
    assert float(instantiate(cfg.optimizer).learning_rate) == pytest.approx(0.01)


def test_command_line_beats_the_ranking_recipe() -> None:
    cfg = compose_train(
        ["+experiment=movielens_ranking", "data.variant=1m", "model.embedding_dim=16"]
    )
    assert (cfg.model.embedding_dim, cfg.data.batch_size) == (16, 4096)


def test_paths_are_absolute_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSYS_IMDB_PATH", raising=False)
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    monkeypatch.delenv("RECSYS_ROOT", raising=False)
    cfg = compose_train(["+experiment=imdb"])
    assert Path(cfg.paths.root_dir) == PROJECT_ROOT
    assert Path(cfg.data.data_dir) == PROJECT_ROOT / "data"
    shared = (PROJECT_ROOT / ".." / "shared" / "datasets" / "aclImdb_labeled.tar.gz").resolve()
    assert Path(cfg.data.path).resolve() == shared
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.is_absolute()
    assert run_dir.is_relative_to(PROJECT_ROOT / "outputs" / "imdb" / "runs")


def test_environment_overrides_dataset_locations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_IMDB_PATH", str(tmp_path / "imdb.tar.gz"))
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "cache"))
    cfg = compose_train(["+experiment=imdb"])
    assert cfg.data.path == str(tmp_path / "imdb.tar.gz")
    assert cfg.data.data_dir == str(tmp_path / "cache")


def test_unknown_experiment_gets_hydras_message() -> None:
    with pytest.raises(MissingConfigException, match="experiment/nope"):
        compose_train(["+experiment=nope"])


def test_experiment_without_plus_says_how_to_append() -> None:
    with pytest.raises(ConfigCompositionException, match=r"\+experiment=movielens"):
        compose_train(["experiment=movielens"])


def test_misspelled_key_is_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="epochz"):
        compose_train(["+experiment=movielens", "trainer.epochz=3"])


def test_debug_fast_shrinks_the_run() -> None:
    cfg = compose_train(["+experiment=movielens", "+debug=fast"])
    assert cfg.trainer.epochs == 1
    assert cfg.trainer.limit_train_batches == 5
    assert cfg.task_name == "debug"


@pytest.mark.parametrize(
    ("optimizer", "class_name"),
    [("sparse_adam", "SparseAdam"), ("adam", "Adam"), ("adagrad", "Adagrad")],
)
def test_optimizers_instantiate(optimizer: str, class_name: str) -> None:
    cfg = compose_train([f"optimizer={optimizer}", "optimizer.learning_rate=0.02"])
    built = hydra.utils.instantiate(cfg.optimizer)
    assert type(built).__name__ == class_name
    assert float(built.learning_rate.numpy()) == pytest.approx(0.02)


def test_sparse_adam_is_the_default_optimizer() -> None:
    assert compose_train([]).optimizer._target_ == "recsys.optimizers.SparseAdam"


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed",
)
def test_optuna_search_composes() -> None:
    cfg = compose_train(["+experiment=movielens", "+hparams_search=movielens_optuna"])
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric.startswith("val/")
    assert cfg.data.val_fraction > 0
    assert set(cfg.hydra.sweeper.params) == {"optimizer.learning_rate", "model.embedding_dim"}


# Constructor arguments a config does not set: the data module is passed by recsys.train,
# `name` is the Keras name, `vocabulary` is for models built in code from another's vocabulary.
NOT_CONFIGURED = {"self", "data", "name", "vocabulary"}


@pytest.mark.parametrize("group", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_model_config_lists_every_argument_with_its_default(group: str) -> None:
    """conf/model/*.yaml is the models' documentation: one key per constructor argument,
    each with the constructor's default (experiments override what they change)."""
    config = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{group}.yaml"))
    model = hydra.utils.get_class(config.pop("_target_"))
    parameters = inspect.signature(model.__init__).parameters
    defaults = {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in parameters.items()
        if name not in NOT_CONFIGURED
    }
    assert config == defaults


@pytest.mark.parametrize(
    ("variant", "want"), [("100k", (100, 200.0, 700)), ("1m", (60, 300.0, 900))]
)
def test_autorec_experiment_picks_the_recipe_of_the_variant(variant: str, want: tuple) -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["+experiment=movielens_autorec", f"data.variant={variant}"])
    schedule = instantiate(cfg.optimizer)._learning_rate
    assert type(schedule).__name__ == "CosineDecay"
    assert (cfg.trainer.epochs, cfg.model.l2, schedule.decay_steps) == want
    assert float(schedule(0)) == pytest.approx(0.002)
    assert float(schedule(want[2])) == pytest.approx(0.0, abs=1e-9)
    cfg = compose_train(["+experiment=movielens_autorec", f"data.variant={variant}", "model.l2=5"])
    assert cfg.model.l2 == 5
