"""The open model registry: register(), entry points, module:Class references, custom rows in the results and the
report, Ray shipping of custom modules, and the foundation probes from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import TINY_BENCH
from spared.bench import RunSpec, TrainingConfig
from spared.models import registry

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: A small custom patch model, as a user would write it (module text; ``{name}``: the class name).
CUSTOM_MODULE = textwrap.dedent('''
    """A tiny custom histology-to-expression model (spared registry tests)."""
    import os

    from torch import nn

    from spared.models.base import Predictor

    if os.environ.get("SPARED_TEST_IMPORT_LOG"):
        with open(os.environ["SPARED_TEST_IMPORT_LOG"], "a") as log:
            log.write(f"{os.getpid()} {__file__}\\n")


    class TheModel(Predictor):
        input_kind = "patch"
        label = "The Model"
        paper = "Registry tests"
        year = 2026
        recipe = {"lr": 0.01, "batch_size": 16}

        def __init__(self, n_genes, width=4):
            super().__init__(n_genes)
            self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten())
            self.head = nn.Linear(width, n_genes)

        def forward(self, batch):
            return self.head(self.features(batch["image"]))


    class Undeclared(Predictor):
        def forward(self, batch):
            return batch["target"]


    class NoForward(Predictor):
        input_kind = "slide"
''')
TINY_STNET = {"backbone_kwargs": {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16}}
BENCH_ARGS = ["--datasets", TINY_BENCH, "--targets", "raw", "--max-steps", "2", "--batch-size", "16",
              "--patch-size", "32", "--val-every", "2", "--lr", "0.01", "--backbone-weights", "none"]


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder outside the package holding ``the_mod.py``, importable in this process (sys.path restored after)."""
    folder = tmp_path / "user_models"
    folder.mkdir()
    (folder / "the_mod.py").write_text(CUSTOM_MODULE)
    monkeypatch.setattr(sys, "path", [*sys.path, str(folder)])
    yield folder
    sys.modules.pop("the_mod", None)
    for name in [n for n, e in registry.entries().items() if not e.builtin]:
        registry.unregister(name)


def model_config(tmp_path: Path) -> str:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"stnet": TINY_STNET}))
    return str(path)


# -------------------------------------------------------------------------------------------------- Python API


def test_builtins_are_registered_through_the_public_mechanism():
    from spared.models import MODEL_INFO, PROBE_MODELS, TRAINED_MODELS
    from spared.models.builtin import BUILTIN_MODELS

    assert [b[0] for b in BUILTIN_MODELS] == list(TRAINED_MODELS) + list(PROBE_MODELS)
    assert all(MODEL_INFO[n].origin == "builtin" for n in TRAINED_MODELS + PROBE_MODELS)
    assert MODEL_INFO["sepal"].input_kind == "graph" and MODEL_INFO["vit_b_delta"].target == "deltas"
    for name in TRAINED_MODELS:  # the lazy registrations agree with what each class declares
        cls = MODEL_INFO[name].load()
        assert cls.input_kind == MODEL_INFO[name].input_kind and cls.predicts_deltas == (name in ("vit_b_delta",
                                                                                              "sepal"))
    with pytest.raises(ValueError, match="built into spared"):
        registry.unregister("stnet")
    with pytest.raises(ValueError, match="registered already"):
        registry.register("stnet", "spared.models.vit:ViTB", input_kind="patch")


def test_register_a_custom_model_with_its_recipe_and_the_default(module_dir):
    import the_mod

    from spared.models import MODEL_INFO, TRAINED_MODELS, build_model
    from spared.models.recipe import DEFAULT_SOURCE, recipe, recipe_origin

    entry = registry.register("mine", the_mod.TheModel)
    assert entry.ref == "the_mod:TheModel" and entry.label == "The Model" and not entry.builtin
    assert "mine" in MODEL_INFO and "mine" in registry.names("trained") and "mine" not in TRAINED_MODELS[:10]
    rec = recipe("mine")
    assert (rec.lr, rec.batch_size, rec.epochs, rec.optimizer) == (0.01, 16, 50, "adam")
    assert rec.sources["lr"] == "given with the model" and rec.sources["epochs"] == DEFAULT_SOURCE
    assert recipe_origin(rec) == "custom" and build_model("mine", 5).head.out_features == 5
    plain = registry.register("plain", the_mod.TheModel, recipe={}, label="Plain")
    assert recipe_origin(plain.recipe()) == "default" and plain.recipe().lr == 1e-4
    # the same class again is fine; another under a taken name needs replace=True
    registry.register("mine", the_mod.TheModel)
    with pytest.raises(ValueError, match="registered already"):
        registry.register("mine", the_mod.TheModel, recipe={"lr": 1.0})
    assert registry.register("mine", the_mod.TheModel, recipe={"lr": 1.0}, replace=True).recipe().lr == 1.0
    registry.unregister("mine")
    assert "mine" not in MODEL_INFO


def test_registration_errors_say_what_to_do(module_dir):
    import the_mod

    with pytest.raises(ValueError, match="declare how it is batched"):
        registry.register("undeclared", the_mod.Undeclared)
    assert registry.register("declared", the_mod.Undeclared, input_kind="slide").input_kind == "slide"
    with pytest.raises(TypeError, match="does not implement forward"):
        registry.register("noforward", the_mod.NoForward)
    with pytest.raises(TypeError, match="not a subclass"):
        registry.register("notamodel", dict, input_kind="patch")
    with pytest.raises(ValueError, match="graph model"):
        registry.register("graphy", the_mod.Undeclared, input_kind="graph")
    with pytest.raises(ValueError, match="input_kind must be one of"):
        registry.register("odd", "the_mod:TheModel", input_kind="voxel")
    with pytest.raises(ValueError, match="model name"):
        registry.register("the_mod:TheModel", the_mod.TheModel)
    with pytest.raises(ValueError, match="unknown setting"):
        registry.register("badrecipe", the_mod.TheModel, recipe={"learning_rate": 1})
    with pytest.raises(ImportError, match=r"cannot import module 'no_such_mod'.*PYTHONPATH"):
        registry.get("no_such_mod:Net")
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*stnet.*package.module:ClassName"):
        registry.get("nope")


def test_run_specs_carry_custom_models_to_any_process(module_dir):
    import the_mod

    builtin = RunSpec("stnet", "simulated", "raw", 0, {}, TrainingConfig(max_steps=5))
    assert builtin.custom_model == {} and "custom_model" not in builtin.identity()
    by_ref = RunSpec("the_mod:TheModel", "simulated", "raw", 0, {}, TrainingConfig(max_steps=5))
    assert by_ref.custom_model["ref"] == "the_mod:TheModel" and by_ref.custom_model["recipe_origin"] == "custom"
    assert by_ref.run_id.startswith("the_mod_TheModel-simulated-raw-s0-")
    assert RunSpec.from_dict(json.loads(json.dumps(by_ref.to_dict()))) == by_ref
    registry.register("mine", the_mod.TheModel)
    first = RunSpec("mine", "simulated", "raw", 0, {}, TrainingConfig(max_steps=5))
    registry.register("mine", the_mod.TheModel, recipe={"lr": 0.5}, replace=True)
    second = RunSpec("mine", "simulated", "raw", 0, {}, TrainingConfig(max_steps=5))
    assert first.run_id != second.run_id  # the recipe is part of a custom run's identity
    # a process that never saw register() (a Ray worker) rebuilds the entry from the spec
    registry.unregister("mine")
    entry = registry.ensure("mine", second.custom_model)
    assert entry.origin == "run spec" and entry.recipe().lr == 0.5 and entry.label == "The Model"
    assert entry.recipe().sources["lr"] == "given with the model"
    sys.modules.pop("the_mod")
    registry.unregister("the_mod:TheModel")
    rebuilt = registry.ensure("the_mod:TheModel", by_ref.custom_model)
    assert rebuilt.origin == "run spec" and "the_mod" not in sys.modules  # imported only when used
    assert rebuilt.load().__name__ == "TheModel" and rebuilt.recipe().lr == 0.01


def test_ray_runtime_env_ships_what_is_not_installed(module_dir, tmp_path):
    package = tmp_path / "pkg_root" / "user_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(CUSTOM_MODULE)
    sys.path.append(str(package.parent))
    try:
        env = registry.ray_runtime_env(["the_mod:TheModel", "user_pkg.nets:TheModel", "the_mod:TheModel"],
                                       {"env_vars": {"A": "1"}, "py_modules": ["/already/there"]})
    finally:
        sys.path.remove(str(package.parent))
    assert env["env_vars"] == {"A": "1"}
    assert env["py_modules"] == ["/already/there", str(module_dir / "the_mod.py"), str(package.resolve())]
    assert registry.ray_runtime_env(["spared.models.stnet:STNet", "numpy.linalg:norm", "json:JSONDecoder"]) == {}
    with pytest.raises(ModuleNotFoundError, match="'absent_mod' cannot be found on the driver"):
        registry.ray_runtime_env(["absent_mod:Net"])
    with pytest.raises(ValueError, match="__main__"):
        registry.ray_runtime_env(["__main__:Net"])


# ------------------------------------------------------------------------------------------------------ the CLI


def test_cli_benchmarks_a_custom_model_beside_a_builtin_one(module_dir, tmp_path, bench_data_dir, monkeypatch):
    from typer.testing import CliRunner

    from spared.cli import app
    from spared.report import build_report

    monkeypatch.chdir(module_dir)  # `--models the_mod:TheModel` is found in the current folder, as python -m does
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(module_dir)])
    sys.modules.pop("the_mod", None)
    out = tmp_path / "res"
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--models", "the_mod:TheModel,stnet", *BENCH_ARGS, "--out", str(out),
                                 "--data-dir", str(bench_data_dir), "--model-config", model_config(tmp_path)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "the_mod:TheModel (custom)" in result.output
    records = {r["model"]: r for r in json.loads(runner.invoke(app, ["results", str(out), "--json"]).output)}
    assert set(records) == {"the_mod:TheModel", "stnet"}
    assert records["the_mod:TheModel"]["custom"] and not records["stnet"]["custom"]
    from spared.bench import ResultsTable

    rows = ResultsTable(out).load().set_index("model")
    assert rows.loc["the_mod:TheModel", "recipe_origin"] == "custom" and rows.loc["stnet", "recipe_origin"] == "authors"
    assert json.loads(rows.loc["the_mod:TheModel", "recipe"])["lr"] == 0.01  # its own recipe, recorded
    page = build_report(out, processed={}).read_text()
    assert "The Model (custom)" in page and "STNet" in page and "spared&#x27;s default recipe" in page
    listed = runner.invoke(app, ["models", "the_mod:TheModel"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "custom (module path" in " ".join(listed.output.split())


def test_cli_rejects_what_it_cannot_run_before_any_work(tmp_path, module_dir):
    from typer.testing import CliRunner

    from spared.cli import app

    result = CliRunner().invoke(app, ["bench", "--models", "the_mod:Undeclared,uni_probe,nomodel", *BENCH_ARGS,
                                      "--backbone-weights", "imagenet", "--weights-dir", str(tmp_path),
                                      "--out", str(tmp_path / "res")])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "3 problem(s) found before any run started" in text
    assert "declare how it is batched" in text and "unknown model 'nomodel'" in text
    assert "uni/pytorch_model.bin" in text and "WEIGHTS_DIR/uni/" in text  # the file, its source, where to put it
    assert not (tmp_path / "res" / "runs").exists()


def test_cli_runs_a_foundation_probe(tmp_path, bench_data_dir):
    from typer.testing import CliRunner

    from spared.cli import app

    config = tmp_path / "probe.json"
    tiny_vit = {"arch": "vit_tiny_patch16_224", "input_size": 32,
                "kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2,
                           "num_classes": 0}}
    config.write_text(json.dumps({"uni_probe": {"encoder": tiny_vit}}))
    out = tmp_path / "res"
    args = ["bench", "--models", "uni_probe", *BENCH_ARGS, "--targets", "raw,completed", "--model-config",
            str(config), "--out", str(out), "--data-dir", str(bench_data_dir)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (record,) = json.loads(CliRunner().invoke(app, ["results", str(out), "--json"]).output)
    assert record["n raw"] == 1 and record["n completed"] == 1


def _cli(args: list[str], cwd: Path, extra_path: str = "", log: Path | None = None, driver_path: str = ""
         ) -> subprocess.CompletedProcess:
    """``spared ARGS`` in a fresh process with spared's sources (and ``extra_path``) on PYTHONPATH; ``driver_path`` is
    added to the driver's ``sys.path`` only (not to the environment workers inherit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, extra_path) if p), "COLUMNS": "200"}
    if log is not None:
        env["SPARED_TEST_IMPORT_LOG"] = str(log)
    code = (f"import sys; sys.path.append({driver_path!r}); " if driver_path else "") + \
        "from spared.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_entry_point_models_are_seen_by_models_and_bench(tmp_path, bench_data_dir):
    site = tmp_path / "site"
    (site / "spared_plugin_demo").mkdir(parents=True)
    (site / "spared_plugin_demo" / "__init__.py").write_text(CUSTOM_MODULE)
    dist = site / "spared_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: spared-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[spared.models]\nplugnet = spared_plugin_demo:TheModel\n"
                                           "brokennet = spared_plugin_demo:Missing\n")
    listed = _cli(["models", "--json"], tmp_path, str(site))
    assert listed.returncode == 0, listed.stderr
    records = {r["model"]: r for r in json.loads(listed.stdout)}
    assert records["plugnet"]["origin"] == "entry point (spared-plugin-demo)" and records["plugnet"]["custom"]
    assert "brokennet" in listed.stderr and "has no 'Missing'" in listed.stderr  # a broken plugin is named
    out = tmp_path / "res"
    ran = _cli(["bench", "--models", "plugnet", *BENCH_ARGS, "--out", str(out), "--data-dir", str(bench_data_dir)],
               tmp_path, str(site))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    from spared.bench import aggregate

    (record,) = aggregate(out).to_dict(orient="records")
    assert record["model"] == "plugnet" and record["custom"] and record["n raw"] == 1


@pytest.mark.slow
def test_ray_workers_get_a_custom_module_they_cannot_import_themselves(module_dir, tmp_path, bench_data_dir):
    """The module lives outside the package and outside the workers' path (not in PYTHONPATH, not the driver's
    folder): only Ray's runtime environment can bring it to them."""
    pytest.importorskip("ray")
    elsewhere = tmp_path / "driver_cwd"
    elsewhere.mkdir()
    log = tmp_path / "imports.log"
    out = tmp_path / "res"
    ran = _cli(["bench", "--models", "the_mod:TheModel,stnet", *BENCH_ARGS, "--executor", "ray", "--out", str(out),
                "--data-dir", str(bench_data_dir), "--model-config", model_config(tmp_path)], elsewhere,
               log=log, driver_path=str(module_dir))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = json.loads(_cli(["results", str(out), "--json"], elsewhere).stdout)
    assert {r["model"] for r in shown} == {"the_mod:TheModel", "stnet"}
    imports = [line.split(" ", 1) for line in log.read_text().splitlines()]
    driver = [path for pid, path in imports if path == str(module_dir / "the_mod.py")]
    shipped = [path for pid, path in imports if "runtime_resources" in path]
    assert driver and shipped, imports  # the workers imported Ray's copy of the module
    from spared.report import build_report

    page = build_report(out, processed={}).read_text()
    assert "the_mod:TheModel (custom)" in page or "The Model (custom)" in page
