"""What the benchmarks build before they run: the task files, generated data, built models and their
tokenizers, and the inputs of the trainer-overhead, operator-scale and range-test-cost scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import operator_scale, rangetest_cost, trainer_overhead  # noqa: E402
from benchmarks.quality import execution, store, task_setup  # noqa: E402


def test_tasks_file_is_data_and_leaves_every_recommender_at_its_defaults(tmp_path: Path) -> None:
    spec = task_setup.load_tasks(store.TASKS_FILE)
    names = {t["name"]: t for t in spec["tasks"]}
    assert len(names) >= 6 and set(spec["quick"]["tasks"]) <= set(names)
    assert {t["trainer"]["adapter"]["type"] for t in names.values()} >= {"none", "lora"}
    assert {t["model"]["kind"] for t in names.values()} >= {"tiny-gpt2", "tiny-llama", "minilm"}
    assert spec["oracle"]["points"] >= 13 and len(spec["oracle"]["seeds"]) >= 3
    bad = dict(spec, tasks=[{**spec["tasks"][0], "trainer": {**spec["tasks"][0]["trainer"], "adaptive": {}}}])
    path = tmp_path / "tasks.yaml"
    path.write_text(__import__("yaml").safe_dump(bad))
    with pytest.raises(ValueError, match="defaults"):
        task_setup.load_tasks(path)


def test_an_epoch_sized_task_is_as_long_as_the_trainer_runs_it(tmp_path: Path) -> None:
    """A task may give its length in epochs: the benchmark's fine-tune length (what compute and the short
    grid are counted in) is then the steps the trainer itself runs, and a task with no length is refused."""
    task = {
        "name": "epochs",
        "model": {"kind": "tiny-gpt2", "embd": 16, "layers": 1, "heads": 1, "pretrainSteps": 1},
        "data": {"kind": "rule-lm", "train": 120, "eval": 20},
        "trainer": {
            "model": {"task": "causal-lm"},
            "adapter": {"type": "none"},
            "optimization": {"batchSize": 8, "maxSeqLength": 32, "epochs": 2},
        },
    }
    built = task_setup.build_task(task, {"minLearningRate": 1e-3, "maxLearningRate": 1e-2, "points": 2})
    out = tmp_path / "trial"
    out.mkdir()
    code, data, err = execution.call_trainer(
        ["trial", "--config", str(built.config_path), "--learning-rate", "1e-3"], out
    )
    assert code == 0, err
    assert built.steps == data["steps"] > 2

    spec = task_setup.load_tasks(store.TASKS_FILE)
    no_length = {**task, "trainer": {**task["trainer"], "optimization": {"batchSize": 8}}}
    path = tmp_path / "tasks.yaml"
    path.write_text(__import__("yaml").safe_dump({**spec, "tasks": [no_length]}))
    with pytest.raises(ValueError, match=r"trainer\.optimization needs maxSteps or epochs"):
        task_setup.load_tasks(path)


def test_a_built_model_is_fine_tuned_on_the_text_it_was_pre_trained_on(tmp_path: Path) -> None:
    """The tokenizer a built model pre-trains with is its folder's, loaded as the trainer loads it.
    transformers 5 loads any qwen2 folder's tokenizer as a Qwen2Tokenizer, which turns the word-level toy
    vocabulary's sentences into a few repeated tokens: such a model is refused, naming the field; a
    byte-level BPE, as Qwen's own, comes back whole. Every model the task files build passes the check."""
    from finetune_trainer.config import ModelSpec
    from finetune_trainer.modeling import load_tokenizer

    word_level = {"kind": "qwen2", "embd": 16, "layers": 1, "heads": 1}
    built = task_setup.built_tokenizer(word_level)
    with pytest.raises(ValueError, match=r"model\.tokenizer: a qwen2 folder .* loads as Qwen2Tokenizer"):
        task_setup.saved_tokenizer(
            word_level, built, tmp_path / "w", task_setup.model_config(word_level, built)
        )
    assert "Qwen2Tokenizer" in type(load_tokenizer(ModelSpec(name=str(tmp_path / "w")))).__name__
    with pytest.raises(ValueError, match=r"model\.tokenizer: 'sentencepiece' is not one of"):
        task_setup.built_tokenizer({**word_level, "tokenizer": "sentencepiece"})

    specs = [word_level | {"tokenizer": "byte-level-bpe"}]
    for f in store.TASKS_FILE.parent.glob("tasks*.yaml"):
        specs += [t["model"] for t in task_setup.load_tasks(f)["tasks"] if t["model"]["kind"] != "minilm"]
    assert any(m["kind"] == "qwen2" for m in specs[1:])
    for i, model in enumerate(specs):
        built = task_setup.built_tokenizer(model)
        loaded = task_setup.saved_tokenizer(
            model, built, tmp_path / str(i), task_setup.model_config(model, built)
        )
        text = "today the cat likes the great house ."
        assert loaded(text)["input_ids"] == built(text)["input_ids"], model


def test_every_task_file_loads_and_the_held_out_and_fresh_tasks_are_new() -> None:
    files = sorted(store.TASKS_FILE.parent.glob("tasks_*.yaml"))
    assert {f.name for f in files} >= {"tasks_gpu.yaml", "tasks_heldout.yaml", "tasks_fresh.yaml"}
    for f in files:
        spec = task_setup.load_tasks(f)  # refuses a task that sets a recommender's own settings
        assert set(spec["quick"]["tasks"]) <= {t["name"] for t in spec["tasks"]}, f.name
    keys: set[str] = set()
    names: set[str] = set()
    for path in (*store.CPU_TASKS, store.FRESH_TASKS):  # each set new to those before it
        tasks = task_setup.load_tasks(path)["tasks"]
        for t in tasks:
            assert task_setup.task_key(t) not in keys and t["name"] not in names, (path.name, t["name"])
        keys |= {task_setup.task_key(t) for t in tasks}
        names |= {t["name"] for t in tasks}
        results = store.results_name(path)
        assert results in store.STANDING_RESULTS, results  # its committed run is read for the standing
        assert [r.name for r in store.committed_reports(results)] == [t["name"] for t in tasks], results
    assert store.FRESH_RESULTS not in store.CPU_RESULTS, "the replays, which try rules, never read it"


def test_generated_datasets_are_deterministic_and_labelled() -> None:
    assert task_setup.rule_lm_texts(5, 1) == task_setup.rule_lm_texts(5, 1)
    rows = task_setup.negation_sentiment(200, 0, 0.0)
    for text, label in rows:
        assert label in (0, 1)
        if "does not like" in text:
            assert any(w in text for w in ("sad", "broken", "awful", "cold", "dirty", "angry")) == bool(label)


def test_step_rate_skips_warmup_steps() -> None:
    times = {1: 0.0, 2: 5.0, 3: 6.0, 4: 7.0}
    assert trainer_overhead.rate(times, 2) == pytest.approx(1.0)
    clock = trainer_overhead.StepClock()
    clock.write('{"event": "step", "step": 3, "loss": 1.0}\n{"event": "eval", "step": 3}\n')
    assert list(clock.times) == [3]


def test_scale_sweep_is_a_valid_lrsweep() -> None:
    from finetune_operator.api import LRSWEEP

    body = operator_scale.sweep("s0001")
    assert body["kind"] == "LRSweep"
    LRSWEEP.spec.model_validate(body["spec"])


def test_rangetest_cost_builds_a_valid_trainer_config_from_the_example(tmp_path: Path) -> None:
    import string

    import yaml

    from finetune_trainer.config import TrainerConfig

    text = string.Template(rangetest_cost.EXAMPLE.read_text()).substitute(DEMO_DIR=str(tmp_path))
    job = yaml.safe_load(text)
    cfg = rangetest_cost.trainer_config(
        job, tmp_path / "out", job["spec"]["learningRate"]["auto"]["rangeTest"]
    )
    parsed = TrainerConfig.model_validate(cfg)
    assert parsed.range_test.steps == job["spec"]["learningRate"]["auto"]["rangeTest"]["steps"]
