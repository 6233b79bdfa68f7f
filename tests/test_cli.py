"""The command line teaches: descriptions, help on every option, examples per subcommand, the file formats,
the methods' parameters, budget fields and families, MACs of every zoo model with the ratio to full."""

import argparse
import json
from pathlib import Path

import pytest

from dsbench import experiment
from dsbench.cli import build_parser, main
from dsbench.models import zoo
from dsbench.reference_results import TABLES

ROOT = Path(__file__).resolve().parent.parent


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_is_a_description_not_markup():
    text = build_parser().format_help()
    assert "``" not in text and "The ``dsbench`` command" not in text
    assert "results store" in text and "dsbench quickstart" in text


def test_every_subcommand_and_option_has_help_and_examples():
    parser = build_parser()
    for name, sub in subparsers(parser).items():
        assert sub.epilog and sub.epilog.startswith("examples:\n  dsbench"), name
        assert sub.description, name
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"dsbench {name} {action.option_strings or action.dest} has no help"


def test_layout_help_names_every_paper_table():
    text = subparsers(build_parser())["table"].format_help()
    flat = " ".join(text.split())
    for key in ("table1", "table10", "stages", "search"):
        assert f"{key}:" in flat
    assert "Ablation: score terms" in flat and "DiT-XL/2" in flat
    layout = next(a for a in subparsers(build_parser())["table"]._actions if a.dest == "layout")
    assert all(f"{key}: {t.title}" in layout.help.replace("%%", "%") for key, t in TABLES.items())


def test_macs_usage_marks_model_and_method_required():
    usage = subparsers(build_parser())["macs"].format_usage()
    assert "--model MODEL --method METHOD" in usage and "[--model" not in usage and "--calibration" in usage


def test_macs_without_model_says_what_is_required(capsys):
    assert main(["macs"]) == 2
    assert "--model and --method are required" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,expect", [("experiment", "macs_ratio"), ("sweep", "grid"), ("train", "schedules")])
def test_schema_prints_the_file_format(capsys, fmt, expect):
    assert main(["schema", fmt]) == 0
    out = capsys.readouterr().out
    assert "| field | type | default | allowed | description |" in out and expect in out


def test_methods_show_types_defaults_budget_field_and_families(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "PydanticUndefined" not in out and "[default: None]" not in out
    assert "toca: " in out and "budget field: ratio" in out
    assert "applies to: dit models" in out  # sparsedit
    assert "applies to: dit, pixart, flux, wan models" in out
    assert "schedule (str): " in out and "[required]" in out  # diffsparse
    assert "default per model: DiT 0.07" in out  # toca ratio: per-family defaults from the description
    assert "\\|" not in out


def test_methods_one_method(capsys):
    assert main(["methods", "dato"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dato: ") and "applies to: dit, pixart models" in out and "toca" not in out


@pytest.mark.parametrize("model", zoo.available("embedded"))
def test_macs_on_an_embedded_model_prints_the_ratio_to_full(capsys, model):
    assert main(["macs", "--model", model, "--method", "fora", "--set", "interval=2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == model and out["steps"] == 20
    assert out["macs_ratio"] == pytest.approx(out["macs"] / out["macs_full"]) and 0.4 < out["macs_ratio"] < 0.6


def test_macs_text_output_has_the_ratio(capsys):
    assert main(["macs", "--model", "mnist-dit", "--method", "full"]) == 0
    out = capsys.readouterr().out
    assert "ratio to full: 1.000" in out and "0.862 G MACs per image" in out  # the quickstart store's macs_full


def test_example_experiment_parses_and_explains_every_field():
    path = ROOT / "experiments" / "example.yaml"
    exp = experiment.load(path)
    experiment.check_inputs(exp)
    text = path.read_text()
    for section, model in (
        (experiment.Experiment, None),
        (experiment.EvalSet, "eval"),
        (experiment.Latency, "latency"),
        (experiment.MethodEntry, "methods"),
    ):
        for field in section.model_fields:
            assert f"{field}:" in text, f"experiments/example.yaml does not explain {model or ''}.{field}"


def test_metric_model_incompatibility_fails_when_the_file_is_loaded(tmp_path, capsys):
    path = tmp_path / "clip.yaml"
    path.write_text("models: [mnist-dit]\nmetrics: [lpips, clip]\nmethods: [{name: full}]\n")
    store = tmp_path / "r.db"
    assert main(["run", str(path), "--store", str(store), "--no-wandb"]) == 2
    err = capsys.readouterr().err
    assert "field 'metrics[1]'" in err and "clip" in err and "class-conditional" in err
    assert "allowed for mnist-dit: lpips, psnr, ssim" in err
    assert not store.exists()  # before any work


@pytest.mark.parametrize(
    "model,metrics,message",
    [
        ("dit-xl-2-256", ["fid"], "reference images"),
        ("pixart-alpha-256", ["alignment"], "alignment hook"),
        ("pixart-alpha-256", ["vbench"], "videos"),
        ("wan2.1-1.3b", ["lpips"], "videos"),
        ("wan2.1-1.3b", ["vbench", "lpips"], "videos"),
        ("flux-schnell", ["image_reward", "kid"], "reference images"),
    ],
)
def test_metric_compatibility_rules(model, metrics, message):
    with pytest.raises(ValueError, match=message):
        experiment.parse({"name": "x", "models": [model], "metrics": metrics, "methods": [{"name": "full"}]})


def test_prompt_sets_need_a_text_model(tmp_path):
    data = {"name": "x", "models": ["mnist-dit"], "eval": {"set": "prompts", "prompts": "p.txt"}}
    with pytest.raises(ValueError, match="eval.set.*class-conditional"):
        experiment.parse({**data, "methods": [{"name": "full"}]})
